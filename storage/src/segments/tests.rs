use super::*;

/// What the directory's segment files take, from the file system.
fn measured(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn values(items: &[(u64, Vec<u8>)]) -> Vec<String> {
    items
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn fifo_in_segments_whose_size_is_what_the_disk_holds() {
    let dir = tempfile::tempdir().unwrap();
    let queue = SegmentQueue::open_with(dir.path(), 100).unwrap();
    for i in 0..20 {
        queue.push(format!("item-{i:02}").as_bytes()).await.unwrap();
    }
    assert_eq!(queue.len(), 20);
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() > 3,
        "rolled over"
    );
    assert_eq!(queue.bytes_on_disk(), measured(dir.path()));
    assert_eq!(queue.bytes_on_disk(), 20 * (8 + 7));

    let first = queue.read_next(3, u64::MAX).unwrap();
    assert_eq!(values(&first), ["item-00", "item-01", "item-02"]);
    // A byte limit stops early, but one item always comes.
    assert_eq!(values(&queue.read_next(10, 1).unwrap()), ["item-03"]);
    // A weight limit counts what the caller says an item weighs, not its stored bytes.
    let weighed = queue.read_next_weighed(10, 25, |_| 10).unwrap();
    assert_eq!(values(&weighed), ["item-04", "item-05"]);
    let rest = queue.read_next(100, u64::MAX).unwrap();
    assert_eq!(rest.len(), 14);
    assert!(queue.read_next(1, u64::MAX).unwrap().is_empty());

    let before = queue.bytes_on_disk();
    // Six 15-byte records fit a 100-byte segment: acknowledging seven frees the first file.
    queue.ack_through(first[2].0).unwrap();
    assert_eq!(
        queue.bytes_on_disk(),
        before,
        "no segment is all acknowledged yet"
    );
    queue.ack_through(rest[0].0).unwrap();
    assert_eq!(queue.len(), 13);
    assert!(
        queue.bytes_on_disk() < before,
        "a whole segment went back to the disk"
    );
    assert_eq!(queue.bytes_on_disk(), measured(dir.path()));
    queue.ack_through(rest.last().unwrap().0).unwrap();
    assert!(queue.is_empty());
    assert_eq!(queue.bytes_on_disk(), measured(dir.path()));
    assert!(queue.bytes_on_disk() < 100, "{}", queue.bytes_on_disk());

    // Reading goes on after an emptied queue, across new segments.
    for i in 20..30 {
        queue.push(format!("item-{i:02}").as_bytes()).await.unwrap();
    }
    let again = queue.read_next(100, u64::MAX).unwrap();
    assert_eq!(
        values(&again),
        (20..30).map(|i| format!("item-{i:02}")).collect::<Vec<_>>()
    );
    assert!(
        again[0].0 > rest.last().unwrap().0,
        "sequence numbers keep increasing"
    );
}

#[tokio::test]
async fn a_reopen_resends_what_was_not_acknowledged_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = SegmentQueue::open_with(dir.path(), 64).unwrap();
        for i in 0..10 {
            queue.push(format!("item-{i}").as_bytes()).await.unwrap();
        }
        let read = queue.read_next(4, u64::MAX).unwrap();
        queue.ack_through(read[3].0).unwrap();
    }
    // A crash in the middle of a write: half a record at the end of the last segment.
    let mut last: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    last.sort();
    let last = last.pop().unwrap();
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(file);

    let queue = SegmentQueue::open_with(dir.path(), 64).unwrap();
    assert_eq!(queue.len(), 6);
    assert_eq!(
        queue.bytes_on_disk(),
        measured(dir.path()),
        "the torn tail was cut"
    );
    let items = queue.read_next(100, u64::MAX).unwrap();
    assert_eq!(
        values(&items),
        (4..10).map(|i| format!("item-{i}")).collect::<Vec<_>>()
    );
    let seq = queue.push(b"after").await.unwrap();
    assert_eq!(seq, items.last().unwrap().0 + 1);
    assert_eq!(values(&queue.read_next(10, u64::MAX).unwrap()), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_share_syncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let queue = SegmentQueue::open_with(dir.path(), 4096).unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                queue.push(format!("{w}-{i}").as_bytes()).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut got = values(&queue.read_next(1000, u64::MAX).unwrap());
    got.sort();
    let mut want: Vec<String> = (0..8)
        .flat_map(|w| (0..50).map(move |i| format!("{w}-{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(queue.bytes_on_disk(), measured(dir.path()));
}

#[tokio::test]
async fn a_sled_buffer_moves_into_segments_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::Store::open(dir.path()).unwrap();
    let old = store.queue("main").unwrap();
    for item in [&b"a"[..], b"bb", b"ccc"] {
        old.push(item).await.unwrap();
    }
    let queue = store.segment_queue("main", 1 << 20).unwrap();
    assert_eq!(store.move_sled_queue("main", &queue).unwrap(), 3);
    assert_eq!(
        values(&queue.read_next(10, u64::MAX).unwrap()),
        ["a", "bb", "ccc"]
    );
    assert_eq!(
        store.move_sled_queue("main", &queue).unwrap(),
        0,
        "moved once"
    );
    assert!(dir.path().join("export/main").is_dir());
    store.drop_segment_queue("main").unwrap();
    assert!(!dir.path().join("export/main").exists());
}

#[tokio::test]
async fn a_second_open_shares_the_buffer_and_hands_out_again_what_was_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::Store::open(dir.path()).unwrap();
    let first = store.segment_queue("main", 1 << 20).unwrap();
    for item in [&b"a"[..], b"b", b"c"] {
        first.push(item).await.unwrap();
    }
    let read = first.read_next(3, u64::MAX).unwrap();
    first.ack_through(read[0].0).unwrap();
    // A new delivery for the same destination while the old one stops: one buffer, and the
    // batches the old one had in flight come again.
    let second = store.segment_queue("main", 1 << 20).unwrap();
    assert_eq!(values(&second.read_next(10, u64::MAX).unwrap()), ["b", "c"]);
    second.push(b"d").await.unwrap();
    assert_eq!(first.len(), 3, "the same queue");
}
