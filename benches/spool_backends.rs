//! fjall against redb for the spool: one durable (fsync) commit holding a group of events, as
//! the spool's group commit does. `cargo bench --bench spool_backends`.
//!
//! Each iteration commits a batch of 64 events of 300 bytes under fresh keys; criterion reports
//! time per batch (divide by 64 for per event).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const BATCH: usize = 64;

fn bench(c: &mut Criterion) {
    let value = vec![7u8; 300];
    let mut g = c.benchmark_group("spool_backend_group_commit_fsync");
    g.throughput(Throughput::Elements(BATCH as u64));

    let dir = tempfile::tempdir().unwrap();
    let db = fjall::Database::builder(dir.path().join("fjall"))
        .open()
        .unwrap();
    let ks = db
        .keyspace("events", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let mut n: u64 = 0;
    g.bench_function("fjall", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut batch = db.batch().durability(Some(fjall::PersistMode::SyncAll));
                for _ in 0..BATCH {
                    n += 1;
                    batch.insert(&ks, n.to_be_bytes(), value.as_slice());
                }
                batch.commit().unwrap();
            },
            BatchSize::SmallInput,
        )
    });

    const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    let rdb = redb::Database::create(dir.path().join("redb")).unwrap();
    let mut m: u64 = 0;
    g.bench_function("redb", |b| {
        b.iter(|| {
            let tx = rdb.begin_write().unwrap();
            {
                let mut t = tx.open_table(TABLE).unwrap();
                for _ in 0..BATCH {
                    m += 1;
                    t.insert(m, value.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
