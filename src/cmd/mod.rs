pub mod bench;
pub mod demo;
pub mod gen;
pub mod ingest;
pub mod sql;
