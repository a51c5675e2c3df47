//! Bulk decoding of a batch of Kafka messages into one Arrow batch of the table schema.
//!
//! Messages are fed to arrow-json's tape decoder in chunks; a chunk that decodes cleanly
//! costs one pass. Only a chunk that fails (bad JSON, wrong type, not exactly one object) is
//! decoded again message by message, so that each bad message gets its own reason and the
//! good ones around it are kept.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow_json::reader::{Decoder, ReaderBuilder};

use crate::kind::{defaults_to_false, EventKind, PARTITION_COLUMN};
use crate::validate::validate;
use crate::Result;

/// Messages per chunk decoded in one pass. A chunk that fails is split in halves until each bad
/// message stands alone (bisection), so a bad message costs a few bulk re-decodes of its
/// neighbours, never one decoder per message: at 0.5% malformed, one-by-one re-decoding of
/// every failed 512-message chunk (nearly all of them) took a third of the ingest CPU.
const CHUNK: usize = 256;

/// Below this many messages a decode runs on the calling thread: a thread costs tens of
/// microseconds, a message about five.
const PARALLEL_MIN: usize = 16 * 1024;

/// The cores this process may run on (its affinity mask and cgroup quota, as
/// `std::thread::available_parallelism` reads them), read once: what one decode spreads over,
/// and the Parquet writers of one append (`strata-engine`).
pub fn cores() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One Kafka message as the decoder sees it.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    pub payload: &'a [u8],
    pub partition: i32,
    pub offset: i64,
}

impl<'a> RawMessage<'a> {
    /// `payloads` as consecutive messages of one partition from `first_offset` on: how the
    /// benches and tests feed the decoder without a broker.
    pub fn sequence<P: AsRef<[u8]>>(
        payloads: &'a [P],
        partition: i32,
        first_offset: i64,
    ) -> Vec<Self> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawMessage {
                payload: p.as_ref(),
                partition,
                offset: first_offset + i as i64,
            })
            .collect()
    }
}

/// A message that did not become an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Index of the message in the input slice.
    pub index: usize,
    pub reason: String,
}

/// The result of decoding a batch of messages.
#[derive(Debug)]
pub struct Decoded {
    /// Good events, in input order, in the table schema.
    pub batch: RecordBatch,
    /// Index into the input of each row of `batch`.
    pub source_index: Vec<usize>,
    pub rejects: Vec<Reject>,
}

/// Decodes messages of one event kind. Cheap to create; holds no buffers between calls.
#[derive(Debug, Clone)]
pub struct EventDecoder {
    kind: EventKind,
    wire: SchemaRef,
    table: SchemaRef,
}

impl EventDecoder {
    pub fn new(kind: EventKind) -> Self {
        Self {
            kind,
            wire: kind.wire_schema(),
            table: kind.table_schema(),
        }
    }

    pub fn kind(&self) -> EventKind {
        self.kind
    }

    pub fn table_schema(&self) -> &SchemaRef {
        &self.table
    }

    fn decoder(&self, rows: usize) -> Result<Decoder> {
        Ok(ReaderBuilder::new(self.wire.clone())
            .with_strict_mode(false)
            .with_batch_size(rows.max(1))
            .build_decoder()?)
    }

    /// Decodes and validates `messages`; `ingested_at_us` stamps every row. A large input is
    /// cut into one contiguous piece per core ([`cores`]), decoded on scoped threads
    /// and put back together in input order: the same answer as one pass, in less wall time.
    pub fn decode(&self, messages: &[RawMessage<'_>], ingested_at_us: i64) -> Result<Decoded> {
        self.decode_on(messages, ingested_at_us, cores())
    }

    /// [`Self::decode`] over at most `threads` threads.
    fn decode_on(
        &self,
        messages: &[RawMessage<'_>],
        ingested_at_us: i64,
        threads: usize,
    ) -> Result<Decoded> {
        let threads = threads.min(messages.len() / (PARALLEL_MIN / 2)).max(1);
        if threads == 1 || messages.len() < PARALLEL_MIN {
            return self.decode_serial(messages, ingested_at_us);
        }
        // Pieces of whole chunks, so that each piece's chunks are the serial pass's chunks.
        let piece = messages.len().div_ceil(threads).div_ceil(CHUNK) * CHUNK;
        let parts: Vec<Result<Decoded>> = std::thread::scope(|scope| {
            let handles: Vec<_> = messages
                .chunks(piece)
                .map(|msgs| scope.spawn(move || self.decode_serial(msgs, ingested_at_us)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a decode thread panicked"))
                .collect()
        });
        let mut batches = Vec::with_capacity(parts.len());
        let mut source_index = Vec::with_capacity(messages.len());
        let mut rejects = Vec::new();
        for (n, part) in parts.into_iter().enumerate() {
            let part = part?;
            let base = n * piece;
            batches.push(part.batch);
            source_index.extend(part.source_index.into_iter().map(|i| i + base));
            rejects.extend(part.rejects.into_iter().map(|mut r| {
                r.index += base;
                r
            }));
        }
        Ok(Decoded {
            batch: concat_batches(&self.table, &batches)?,
            source_index,
            rejects,
        })
    }

    /// [`Self::decode`] on the calling thread.
    fn decode_serial(&self, messages: &[RawMessage<'_>], ingested_at_us: i64) -> Result<Decoded> {
        let mut wire_batches = Vec::new();
        let mut wire_index: Vec<usize> = Vec::with_capacity(messages.len());
        let mut rejects = Vec::new();

        for (chunk_no, chunk) in messages.chunks(CHUNK).enumerate() {
            self.decode_range(
                chunk,
                chunk_no * CHUNK,
                &mut wire_batches,
                &mut wire_index,
                &mut rejects,
            )?;
        }

        let wire = concat_batches(&self.wire, &wire_batches)?;
        let reasons = validate(self.kind, &wire, ingested_at_us);
        let keep: BooleanArray = reasons.iter().map(|r| Some(r.is_none())).collect();
        let mut source_index = Vec::with_capacity(wire.num_rows());
        for (row, reason) in reasons.into_iter().enumerate() {
            match reason {
                None => source_index.push(wire_index[row]),
                Some(reason) => rejects.push(Reject {
                    index: wire_index[row],
                    reason,
                }),
            }
        }
        rejects.sort_by_key(|r| r.index);
        let good = filter_record_batch(&wire, &keep)?;
        let batch = self.to_table(&good, &source_index, messages, ingested_at_us)?;
        Ok(Decoded {
            batch,
            source_index,
            rejects,
        })
    }

    /// Decodes `msgs` (the messages from index `base` on) in one pass; when that fails, each
    /// half on its own, down to the single bad messages, which become rejects with their reason.
    fn decode_range(
        &self,
        msgs: &[RawMessage<'_>],
        base: usize,
        batches: &mut Vec<RecordBatch>,
        index: &mut Vec<usize>,
        rejects: &mut Vec<Reject>,
    ) -> Result<()> {
        match self.decode_chunk(msgs)? {
            Ok(batch) => {
                index.extend(base..base + msgs.len());
                batches.push(batch);
            }
            Err(reason) if msgs.len() == 1 => rejects.push(Reject {
                index: base,
                reason,
            }),
            Err(_) => {
                let mid = msgs.len() / 2;
                self.decode_range(&msgs[..mid], base, batches, index, rejects)?;
                self.decode_range(&msgs[mid..], base + mid, batches, index, rejects)?;
            }
        }
        Ok(())
    }

    /// Decodes a chunk in one pass. The outer `Result` is our failure; the inner one says
    /// why the chunk (or, for a chunk of one, the message) is bad.
    fn decode_chunk(
        &self,
        chunk: &[RawMessage<'_>],
    ) -> Result<std::result::Result<RecordBatch, String>> {
        let mut decoder = self.decoder(chunk.len())?;
        for msg in chunk {
            let before = decoder.len();
            let payload = trim_ascii(msg.payload);
            if payload.first() != Some(&b'{') {
                return Ok(Err(if payload.is_empty() {
                    "empty message".to_string()
                } else {
                    "message is not a JSON object".to_string()
                }));
            }
            match decoder.decode(payload) {
                Ok(consumed) if consumed == payload.len() => {}
                Ok(_) => return Ok(Err("more than one JSON value in message".to_string())),
                Err(e) => return Ok(Err(format!("malformed JSON: {}", clean(e)))),
            }
            if decoder.has_partial_record() {
                return Ok(Err("truncated JSON: the object is not closed".to_string()));
            }
            if decoder.len() != before + 1 {
                return Ok(Err("message must hold exactly one JSON object".to_string()));
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) => Ok(Ok(batch)),
            Ok(None) => Ok(Ok(RecordBatch::new_empty(self.wire.clone()))),
            Err(e) => Ok(Err(format!("bad field type: {}", clean(e)))),
        }
    }

    /// Wire rows that passed validation -> table schema (non-null required columns,
    /// `event_date`, lineage columns).
    fn to_table(
        &self,
        good: &RecordBatch,
        source_index: &[usize],
        messages: &[RawMessage<'_>],
        ingested_at_us: i64,
    ) -> Result<RecordBatch> {
        let n = good.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.table.fields().len());
        for field in self.table.fields() {
            let name = field.name().as_str();
            let col: ArrayRef = match name {
                PARTITION_COLUMN => cast(
                    good.column_by_name("occurred_at")
                        .expect("wire has occurred_at"),
                    &DataType::Date32,
                )?,
                "kafka_partition" => Arc::new(Int32Array::from_iter_values(
                    source_index.iter().map(|&i| messages[i].partition),
                )),
                "kafka_offset" => Arc::new(Int64Array::from_iter_values(
                    source_index.iter().map(|&i| messages[i].offset),
                )),
                "ingested_at" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(
                        ingested_at_us,
                        n,
                    ))
                    .with_timezone("UTC"),
                ),
                _ => {
                    // Every non-derived table column is a wire column (same name and type).
                    let col = good
                        .column_by_name(name)
                        .expect("table field is a wire field")
                        .clone();
                    if defaults_to_false(self.kind, name) && col.null_count() > 0 {
                        let b = col
                            .as_any()
                            .downcast_ref::<BooleanArray>()
                            .expect("boolean column");
                        Arc::new(
                            b.iter()
                                .map(|v| Some(v.unwrap_or(false)))
                                .collect::<BooleanArray>(),
                        )
                    } else {
                        col
                    }
                }
            };
            columns.push(col);
        }
        Ok(RecordBatch::try_new(self.table.clone(), columns)?)
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Decoder messages are prefixed with the error kind; keep them short and payload-free.
fn clean(e: arrow::error::ArrowError) -> String {
    let s = e.to_string();
    let s = s
        .strip_prefix("Json error: ")
        .or_else(|| s.strip_prefix("Parser error: "))
        .unwrap_or(&s);
    let mut s = s.to_string();
    // A decoder message may quote part of the payload; cap it so a dead-letter reason
    // never carries a whole payload (the payload column holds that).
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Date32Array};

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn click(id: &str) -> String {
        format!(
            r#"{{"schema_version":1,"event_id":"{id}","occurred_at":"2026-10-01T12:00:00.250Z","user_id":"u-1","item_id":"mar-1","item_type":"marketplace_listing","source":"search","target_url":"/m/1","extra":{{"tolerated":true}}}}"#
        )
    }

    fn decode(kind: EventKind, payloads: &[String]) -> Decoded {
        let raw = RawMessage::sequence(payloads, 3, 100);
        EventDecoder::new(kind).decode(&raw, NOW).unwrap()
    }

    #[test]
    fn good_clicks_become_table_rows() {
        let d = decode(
            EventKind::LinkClick,
            &[
                click("0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11"),
                click("1b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11"),
            ],
        );
        assert!(d.rejects.is_empty(), "{:?}", d.rejects);
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(d.batch.schema(), EventKind::LinkClick.table_schema());
        let date = d
            .batch
            .column_by_name("event_date")
            .unwrap()
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(date.value(0), 20727); // 2026-10-01
        let bot = d.batch.column_by_name("is_bot").unwrap().as_boolean();
        assert!(!bot.value(0), "is_bot defaults to false");
        let off = d
            .batch
            .column_by_name("kafka_offset")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(off.value(1), 101);
    }

    #[test]
    fn each_bad_message_gets_its_reason_and_neighbours_survive() {
        let good = click("0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11");
        let cases: Vec<(String, &str)> = vec![
            (good[..40].to_string(), "truncated"),
            ("not json".into(), "not a JSON object"),
            (String::new(), "empty message"),
            (format!("[{good}]"), "not a JSON object"),
            (format!("{good}{good}"), "more than one JSON value"),
            (
                good.replace("\"item_id\":\"mar-1\",", ""),
                "missing required field `item_id`",
            ),
            (
                good.replace("\"schema_version\":1", "\"schema_version\":\"one\""),
                "bad field type",
            ),
            (
                good.replace("\"schema_version\":1", "\"schema_version\":7"),
                "unsupported schema_version 7",
            ),
            (
                good.replace("0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11", "nope"),
                "event_id is not a UUID",
            ),
            (
                good.replace("2026-10-01T12:00:00.250Z", "1999-12-31T00:00:00Z"),
                "occurred_at",
            ),
            (
                good.replace("2026-10-01T12:00:00.250Z", "yesterday"),
                "bad field type",
            ),
            (
                good.replace("\"source\":\"search\"", "\"source\":\"  \""),
                "empty required field `source`",
            ),
        ];
        let mut payloads = vec![good.clone()];
        for (p, _) in &cases {
            payloads.push(p.clone());
            payloads.push(good.clone());
        }
        let d = decode(EventKind::LinkClick, &payloads);
        assert_eq!(d.batch.num_rows(), cases.len() + 1);
        assert_eq!(d.rejects.len(), cases.len());
        for (reject, (_, want)) in d.rejects.iter().zip(&cases) {
            assert!(
                reject.reason.contains(want),
                "reason `{}` should contain `{want}`",
                reject.reason
            );
            assert_eq!(reject.index % 2, 1);
        }
        assert_eq!(d.source_index.len(), d.batch.num_rows());
        assert!(d.source_index.iter().all(|i| i % 2 == 0));
    }

    #[test]
    fn ai_usage_checks_ranges_and_decimals() {
        let ok = r#"{"schema_version":1,"event_id":"0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11","occurred_at":"2026-10-01T00:00:00Z","feature":"search_answer","provider":"openai","model":"m","input_tokens":10,"output_tokens":5,"cost_usd":"0.000123456","status":"ok"}"#;
        let neg = ok.replace("\"input_tokens\":10", "\"input_tokens\":-1");
        let d = decode(EventKind::AiUsage, &[ok.to_string(), neg]);
        assert_eq!(d.batch.num_rows(), 1);
        assert!(d.rejects[0].reason.contains("`input_tokens` is negative"));
        let cost = d
            .batch
            .column_by_name("cost_usd")
            .unwrap()
            .as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(cost.value(0), 123_456);
    }

    #[test]
    fn a_decode_spread_over_threads_equals_one_pass() {
        // 40,000 messages, every 997th malformed and every 1,499th a bad value, decoded in
        // pieces on 3 threads and in one pass: the same rows, order, indexes and rejects.
        let payloads: Vec<String> = (0..40_000u32)
            .map(|i| {
                let good = click(&format!("{i:08x}-8a8e-4f5e-9a51-3f0c2b0d9e11"));
                match i {
                    i if i % 997 == 5 => good[..30].to_string(),
                    i if i % 1_499 == 7 => good.replace("\"source\":\"search\"", "\"source\":\"\""),
                    _ => good,
                }
            })
            .collect();
        let raw = RawMessage::sequence(&payloads, 1, 0);
        let decoder = EventDecoder::new(EventKind::LinkClick);
        let one = decoder.decode_serial(&raw, NOW).unwrap();
        let spread = decoder.decode_on(&raw, NOW, 3).unwrap();
        let bad = (0..40_000u32)
            .filter(|i| i % 997 == 5 || i % 1_499 == 7)
            .count();
        assert_eq!(one.rejects.len(), bad);
        assert_eq!(one.batch.num_rows(), 40_000 - bad);
        assert_eq!(spread.batch, one.batch);
        assert_eq!(spread.source_index, one.source_index);
        assert_eq!(spread.rejects, one.rejects);
    }
}
