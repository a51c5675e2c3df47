//! The [`Sketch`] trait and the aggregate accumulators generic over it: one sketch for an
//! aggregate without GROUP BY ([`SketchAccumulator`]), one per group in a `Vec` otherwise
//! ([`SketchGroups`]). Both read raw values or serialized sketches, and name their SQL function
//! in errors.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryBuilder};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};

use super::{
    by_group, filtered_out, for_each_bytes, group_u32, DfResult, NotASketch, RowStates, PENDING_MAX,
};

/// What an aggregate builds from its input: raw values (each first turned into an `Item`) or
/// serialized sketches.
pub(super) trait Sketch: Default + Send + Sync + std::fmt::Debug + 'static {
    type Item: Copy + Default + Send + Sync + std::fmt::Debug;
    /// Whether a GROUP BY's rows are kept and added group by group ([`SketchGroups`]), for a
    /// sketch whose `add_item`s give the same sketch in any order.
    const BUFFERED: bool = false;
    /// The type a non-native input is cast to.
    const INPUT: DataType;
    /// Calls `f(row, item)` for each non-null value.
    fn for_each_item(
        values: &ArrayRef,
        f: impl FnMut(usize, Self::Item) -> DfResult<()>,
    ) -> DfResult<()>;
    fn add_item(&mut self, item: Self::Item);
    /// Merges a serialized sketch; on an error the sketch is as it was.
    fn merge_bytes(&mut self, b: &[u8]) -> Result<(), NotASketch>;
    fn write_bytes(&self, out: &mut Vec<u8>);
    fn heap_size(&self) -> usize;

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_bytes(&mut out);
        out
    }
}

/// Accumulates raw values (`from_values`) or serialized sketches into one sketch.
#[derive(Debug, Default)]
pub(super) struct SketchAccumulator<S: Sketch> {
    /// The SQL function, for errors.
    name: &'static str,
    sketch: S,
    from_values: bool,
}

impl<S: Sketch> SketchAccumulator<S> {
    pub(super) fn new(name: &'static str, from_values: bool) -> Self {
        Self {
            name,
            sketch: S::default(),
            from_values,
        }
    }
}

impl<S: Sketch> Accumulator for SketchAccumulator<S> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if self.from_values {
            let sketch = &mut self.sketch;
            S::for_each_item(&values[0], |_, item| {
                sketch.add_item(item);
                Ok(())
            })
        } else {
            merge_binary(self.name, &mut self.sketch, &values[0])
        }
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.sketch.bytes())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.heap_size()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        merge_binary(self.name, &mut self.sketch, &states[0])
    }
}

fn merge_binary<S: Sketch>(name: &str, sketch: &mut S, arr: &ArrayRef) -> DfResult<()> {
    for_each_bytes(arr, &DataType::Binary, |_, b| {
        sketch.merge_bytes(b).map_err(|e| e.in_function(name))
    })
}

/// A sketch aggregate over all groups of a GROUP BY at once: one sketch per group in a `Vec`
/// indexed by group, instead of a boxed accumulator per group. This is what makes the per-day x
/// item rollup (millions of groups, most with one or two visitors) cheap.
#[derive(Debug)]
pub(super) struct SketchGroups<S: Sketch> {
    /// The SQL function, for errors.
    name: &'static str,
    from_values: bool,
    groups: Vec<S>,
    /// Heap bytes held by the sketches, kept up to date per row so `size` is O(1).
    /// `pub(super)` for the malformed-bytes tests, which check it returns to zero.
    pub(super) heap: usize,
    /// [`Sketch::BUFFERED`]: rows not added yet, each with its group.
    pending: Vec<(u32, S::Item)>,
}

impl<S: Sketch> SketchGroups<S> {
    pub(super) fn new(name: &'static str, from_values: bool) -> Self {
        Self {
            name,
            from_values,
            groups: Vec::new(),
            heap: 0,
            pending: Vec::new(),
        }
    }

    /// Adds the pending rows, group by group (see [`by_group`]).
    fn fold(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (starts, items) = by_group(&self.pending, self.groups.len());
        self.pending.clear();
        for (g, sketch) in self.groups.iter_mut().enumerate() {
            let items = &items[starts[g]..starts[g + 1]];
            if items.is_empty() {
                continue;
            }
            let before = sketch.heap_size();
            items.iter().for_each(|&item| sketch.add_item(item));
            self.heap = self.heap + sketch.heap_size() - before;
        }
    }

    fn apply(
        &mut self,
        values: &ArrayRef,
        group_indices: &[usize],
        filter: Option<&arrow::array::BooleanArray>,
        total_num_groups: usize,
        from_values: bool,
    ) -> DfResult<()> {
        self.groups.resize_with(total_num_groups, S::default);
        let keep = |row: usize| !filtered_out(filter, row);
        if from_values && S::BUFFERED {
            let (name, pending) = (self.name, &mut self.pending);
            S::for_each_item(values, |row, item| {
                if keep(row) {
                    pending.push((group_u32(group_indices, row, name)?, item));
                }
                Ok(())
            })?;
            if self.pending.len() >= PENDING_MAX {
                self.fold();
            }
            return Ok(());
        }
        let (name, groups, heap) = (self.name, &mut self.groups, &mut self.heap);
        if from_values {
            S::for_each_item(values, |row, item| {
                if keep(row) {
                    let g = &mut groups[group_indices[row]];
                    let before = g.heap_size();
                    g.add_item(item);
                    *heap = *heap + g.heap_size() - before;
                }
                Ok(())
            })
        } else {
            for_each_bytes(values, &DataType::Binary, |row, b| {
                if keep(row) {
                    let g = &mut groups[group_indices[row]];
                    let before = g.heap_size();
                    g.merge_bytes(b).map_err(|e| e.in_function(name))?;
                    *heap = *heap + g.heap_size() - before;
                }
                Ok(())
            })
        }
    }
}

impl<S: Sketch> GroupsAccumulator for SketchGroups<S> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&arrow::array::BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        let from_values = self.from_values;
        self.apply(
            &values[0],
            group_indices,
            opt_filter,
            total_num_groups,
            from_values,
        )
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.apply(&values[0], group_indices, None, total_num_groups, false)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        self.fold();
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = BinaryBuilder::with_capacity(taken.len(), taken.len() * 8);
        let mut buf = Vec::new();
        for s in &taken {
            self.heap -= s.heap_size();
            buf.clear();
            s.write_bytes(&mut buf);
            out.append_value(&buf);
        }
        Ok(Arc::new(out.finish()))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    /// Skipping the partial aggregation (most day x item x visitor groups hold one row): each
    /// value becomes a sketch of one value, each input sketch passes through.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&arrow::array::BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let arr = &values[0];
        let mut states = RowStates::new(arr.len(), 4, opt_filter);
        if self.from_values {
            let mut buf = Vec::new();
            S::for_each_item(arr, |row, item| {
                let mut s = S::default();
                s.add_item(item);
                buf.clear();
                s.write_bytes(&mut buf);
                states.push(row, &buf);
                Ok(())
            })?;
        } else {
            for_each_bytes(arr, &DataType::Binary, |row, b| {
                states.push(row, b);
                Ok(())
            })?;
        }
        Ok(vec![states.finish(arr.len())])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<S>()
            + self.heap
            + self.pending.capacity() * std::mem::size_of::<(u32, S::Item)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::Hll;
    use arrow::array::AsArray;

    #[test]
    fn groups_accumulator_matches_one_sketch_per_group() {
        use arrow::array::{BooleanArray, StringArray, StringViewArray};
        let values: Vec<Option<String>> = (0..3000)
            .map(|i| (i % 7 != 0).then(|| format!("v{}", i % 1000)))
            .collect();
        let groups: Vec<usize> = (0..3000).map(|i| i % 3).collect();
        let mut expected = vec![Hll::default(), Hll::default(), Hll::default()];
        for (v, &g) in values.iter().zip(&groups) {
            if let Some(v) = v {
                expected[g].insert(v.as_bytes());
            }
        }
        // Raw values, in two batches of two layouts, then emitted first 1 then the rest.
        let (a, b) = values.split_at(1500);
        let a: ArrayRef = Arc::new(StringArray::from(a.to_vec()));
        let b: ArrayRef = Arc::new(StringViewArray::from(b.to_vec()));
        let mut acc = SketchGroups::<Hll>::new("hll_sketch", true);
        acc.update_batch(std::slice::from_ref(&a), &groups[..1500], None, 3)
            .unwrap();
        // Folded once between the batches (as past PENDING_MAX rows), once when emitted.
        assert_eq!(acc.pending.len(), 1500 - 1500_usize.div_ceil(7));
        acc.fold();
        assert!(acc.pending.is_empty());
        acc.update_batch(std::slice::from_ref(&b), &groups[1500..], None, 3)
            .unwrap();
        assert!(acc.size() > 0);
        let first = acc.evaluate(EmitTo::First(1)).unwrap();
        let rest = acc.evaluate(EmitTo::All).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(rest.len(), 2);
        assert_eq!(acc.heap, 0);
        let got: Vec<&[u8]> = first
            .as_binary::<i32>()
            .iter()
            .chain(rest.as_binary::<i32>().iter())
            .map(Option::unwrap)
            .collect();
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(*g, e.to_bytes().as_slice());
        }

        // Skipped partial aggregation: states per row, merged by a final accumulator.
        let mut fin = SketchGroups::<Hll>::new("hll_merge", false);
        for (arr, gi) in [(&a, &groups[..1500]), (&b, &groups[1500..])] {
            let state = acc
                .convert_to_state(std::slice::from_ref(arr), None)
                .unwrap();
            assert_eq!(state[0].len(), arr.len());
            assert_eq!(state[0].null_count(), arr.null_count());
            fin.merge_batch(&state, gi, 3).unwrap();
        }
        let merged = fin.evaluate(EmitTo::All).unwrap();
        for (g, e) in merged.as_binary::<i32>().iter().zip(&expected) {
            assert_eq!(g.unwrap(), e.to_bytes().as_slice());
        }

        // A FILTER clause: rows whose filter is false or null are left out.
        let filter = BooleanArray::from(
            (0..1500)
                .map(|i| (i % 5 != 0).then_some(i % 2 == 0))
                .collect::<Vec<_>>(),
        );
        let mut filtered = SketchGroups::<Hll>::new("hll_sketch", true);
        filtered
            .update_batch(std::slice::from_ref(&a), &groups[..1500], Some(&filter), 3)
            .unwrap();
        let mut want = vec![Hll::default(), Hll::default(), Hll::default()];
        for (i, v) in values[..1500].iter().enumerate() {
            if let (Some(v), true) = (v, i % 5 != 0 && i % 2 == 0) {
                want[groups[i]].insert(v.as_bytes());
            }
        }
        let out = filtered.evaluate(EmitTo::All).unwrap();
        for (g, e) in out.as_binary::<i32>().iter().zip(&want) {
            assert_eq!(g.unwrap(), e.to_bytes().as_slice());
        }
    }
}
