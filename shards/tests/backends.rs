//! The shard contract, run against memory, a local directory and a real S3 server.

mod common;

use futures::TryStreamExt;
use object_store::path::Path;
use s3_shards::reader::hash_object;
use s3_shards::{
    ShardIndex, ShardReader, ShardWriter, WriterOptions, lookup, publish, samples_table, verify, write_samples,
};

use common::{backends, ct_samples, float_sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_round_trip_exactly() {
    let samples = vec![float_sample("BraTS", "c1", 1), float_sample("BraTS", "c1", 2), float_sample("BraTS", "c2", 4)];
    assert_ne!(samples[0].image_scale, 1.0, "the float sample must exercise scaled quantisation");
    for b in backends("round-trip") {
        let shards =
            write_samples(b.loc.store().clone(), "BraTS", "default", samples.clone(), WriterOptions::default())
                .await
                .unwrap();
        assert_eq!(shards.len(), 1, "{}", b.name);
        assert_eq!(shards[0].path, "shards/BraTS/default/part-00000.parquet");
        assert_eq!(shards[0].rows, 3);
        let path = Path::from(shards[0].path.as_str());
        assert_eq!(hash_object(b.loc.store().as_ref(), &path).await.unwrap(), (shards[0].bytes, shards[0].xxh3));
        let reader = ShardReader::open(b.loc.store().clone(), &path).await.unwrap();
        assert_eq!(reader.read_all().await.unwrap(), samples, "{}", b.name);
        assert_eq!(reader.read_row(2).await.unwrap(), samples[2], "{}", b.name);
        assert!(reader.read_row(3).await.is_err());
        let headers = reader.headers().await.unwrap();
        assert_eq!(
            headers.iter().map(|h| h.sample_id.as_str()).collect::<Vec<_>>(),
            ["BraTS/default/c1/1", "BraTS/default/c1/2", "BraTS/default/c2/4"]
        );
        assert_eq!(headers[1].meta, samples[1].meta);
        assert_eq!(headers[1].checksum, samples[1].checksum);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_shards_go_multipart_and_roll_over() {
    let samples = ct_samples("AMOS22", 22);
    let opts = WriterOptions {
        row_group_rows: 4,
        target_file_bytes: 12 << 20,
        upload_part_bytes: 5 << 20,
        zstd_level: 1,
        ..Default::default()
    };
    for b in backends("multipart") {
        let shards =
            write_samples(b.loc.store().clone(), "AMOS22", "default", samples.clone(), opts.clone()).await.unwrap();
        assert!(shards.len() >= 2, "{}: expected rolling at 12 MiB, got {shards:?}", b.name);
        assert!(
            shards[0].bytes >= 12 << 20,
            "{}: first shard {} bytes spans several 5 MiB parts",
            b.name,
            shards[0].bytes
        );
        assert_eq!(shards.iter().map(|s| s.rows).sum::<u64>(), 22);
        let mut back = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            assert_eq!(s.path, format!("shards/AMOS22/default/part-{i:05}.parquet"));
            let path = Path::from(s.path.as_str());
            assert_eq!(hash_object(b.loc.store().as_ref(), &path).await.unwrap(), (s.bytes, s.xxh3), "{}", b.name);
            let r = ShardReader::open(b.loc.store().clone(), &path).await.unwrap();
            assert!(r.row_group_rows().iter().all(|&n| n <= 4));
            back.extend(r.read_all().await.unwrap());
        }
        assert_eq!(back, samples, "{}: samples come back in order", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_upload_leaves_nothing_visible() {
    let samples = ct_samples("KiTS", 8);
    let opts = WriterOptions { row_group_rows: 2, upload_part_bytes: 5 << 20, ..Default::default() };
    for b in backends("abort") {
        let mut w = ShardWriter::new(b.loc.store().clone(), "KiTS", "default", opts.clone()).unwrap();
        for s in samples.clone() {
            assert!(w.push(s).await.unwrap().is_none());
        }
        w.abort().await;
        let listed: Vec<_> = b.loc.store().list(None).try_collect().await.unwrap();
        assert!(listed.is_empty(), "{}: {listed:?}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_refuses_bad_samples() {
    let mut s = float_sample("D", "c", 1);
    s.checksum ^= 1;
    let b = &backends("refuse")[0];
    let mut w = ShardWriter::new(b.loc.store().clone(), "D", "default", WriterOptions::default()).unwrap();
    let e = w.push(s).await.unwrap_err().to_string();
    assert!(e.contains("D/default/c/1") && e.contains("checksum"), "{e}");
    let other = float_sample("OTHER", "c", 1);
    let e = w.push(other).await.unwrap_err().to_string();
    assert!(e.contains("written to the shards of D/default"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_store_verifies_and_finds_samples() {
    for b in backends("publish") {
        let store = b.loc.store();
        let mut shards = Vec::new();
        shards.extend(
            write_samples(store.clone(), "A", "default", ct_samples("A", 5), WriterOptions::default()).await.unwrap(),
        );
        shards.extend(
            write_samples(store.clone(), "B", "default", vec![float_sample("B", "c9", 3)], WriterOptions::default())
                .await
                .unwrap(),
        );
        let index = publish(store, "test", shards, &[]).await.unwrap();
        let loaded = ShardIndex::load(store.as_ref()).await.unwrap();
        assert_eq!(loaded, index);
        assert_eq!(loaded.datasets["A"].total.samples, 5);
        assert_eq!(loaded.samples.as_ref().unwrap().rows, 6);
        let rows = samples_table::read(store.as_ref()).await.unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[5].sample_id, "B/default/c9/3");
        let at = lookup::find_sample(store, &loaded, "A/default/case003/1").await.unwrap();
        assert_eq!((at.shard.as_ref(), at.row), ("shards/A/default/part-00000.parquet", 3));
        let report = verify::verify_store(store, |_, _| {}).await.unwrap();
        assert!(report.ok(), "{}: {:?}", b.name, report.problems);
        assert_eq!((report.shards, report.samples_ok), (2, 6));
        assert!(report.unreferenced.is_empty());
    }
}
