//! Criterion benchmarks of the per-postback hot paths: URL expansion,
//! request parsing and validation, and the wire format.
//!
//! `cargo bench -p postback-bench`

#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use postback_common::{records::postback as wire, records::request as request_entry, template};

const SEED: &str = include_str!("../../../schemas/examples/seed-request.json");

fn hundred_items() -> String {
    let item = r#"{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png","n":1}"#;
    let items = vec![item; 100].join(",");
    format!(
        r#"{{"endpoint":{{"method":"GET","url":"http://sample_domain_endpoint.com/data?title={{mascot}}&image={{location}}&foo={{bar}}"}},"data":[{items}]}}"#
    )
}

fn postbacks(body: &str) -> Vec<postback_common::Postback> {
    let mut buf = body.as_bytes().to_vec();
    let parsed = postback_ingest::json::parse(&mut buf).expect("JSON");
    postback_ingest::request::postbacks(&parsed, 1_764_288_000_000, &Default::default()).expect("valid")
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    for (name, body) in [("seed", SEED.to_owned()), ("100 items", hundred_items())] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("parse and validate, {name}"), |b| {
            b.iter(|| {
                let mut buf = body.as_bytes().to_vec();
                let parsed = postback_ingest::json::parse(black_box(&mut buf)).expect("JSON");
                postback_ingest::request::postbacks(&parsed, 1_764_288_000_000, &Default::default()).expect("valid")
            })
        });
    }
    group.finish();
}

fn expand(c: &mut Criterion) {
    let postback = postbacks(SEED).remove(0);
    c.bench_function("template expand, seed", |b| {
        b.iter(|| template::expand(black_box(&postback.url), black_box(&postback.data), "").expect("expand"))
    });
}

fn wire_format(c: &mut Criterion) {
    let postback = postbacks(SEED).remove(0);
    let bytes = wire::encode(&postback);
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode, seed", |b| b.iter(|| wire::encode(black_box(&postback))));
    group.bench_function("decode, seed", |b| b.iter(|| wire::decode(black_box(&bytes)).expect("decode")));
    group.finish();

    // Version 3, as ingest writes and deliver reads it: pack a request (the
    // record's encoding and SHA-256 included), decode the entry, and build
    // its postbacks from the record.
    let mut group = c.benchmark_group("wire v3");
    for (name, body) in [("seed", SEED.to_owned()), ("100 items", hundred_items())] {
        let postbacks = postbacks(&body);
        let packed = request_entry::pack(&postbacks);
        let (_, record) = packed[0].endpoint.clone().expect("version 3");
        let endpoint = request_entry::Endpoint::decode(&record).expect("record");
        group.throughput(Throughput::Elements(postbacks.len() as u64));
        group.bench_function(format!("pack, {name}"), |b| b.iter(|| request_entry::pack(black_box(&postbacks))));
        group.bench_function(format!("decode and unpack, {name}"), |b| {
            b.iter(|| wire::decode_entry(black_box(&packed[0].payload)).expect("decode").postbacks(&endpoint))
        });
    }
    group.finish();
}

criterion_group!(benches, parse, expand, wire_format);
criterion_main!(benches);
