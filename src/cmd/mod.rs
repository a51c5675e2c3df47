pub mod bench;
pub mod demo;
pub mod gen;
pub mod ingest;
pub mod rollup;
pub mod serve;
pub mod sql;
pub mod token;
