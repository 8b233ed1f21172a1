//! The journal's unit tests: damage, loss, rotation, restart points.

use super::*;
use codec::{InstitutionId, TransactionId};

fn record(n: u64) -> Record {
    Record::Admitted {
        reference: n,
        time_ms: n as i64,
        originator: InstitutionId::new("ACQ0001").expect("valid"),
        receiver: InstitutionId::new("WECHATPAY").expect("valid"),
        id: TransactionId::new(&format!("T{n}")).expect("valid"),
        amount_minor: n,
        currency: 156,
        refund_of: 0,
        payment_code: None,
    }
}

/// Every record, and where a torn tail starts.
struct Contents {
    records: Vec<Record>,
    torn_tail: Option<(PathBuf, u64)>,
}

fn read(dir: &Path) -> Result<Contents, JournalError> {
    let mut records = Vec::new();
    let torn_tail = read_with(dir, None, |_, record| records.push(record))?;
    Ok(Contents { records, torn_tail })
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switch-journal-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn write(dir: &Path, count: u64) -> PathBuf {
    let (mut journal, recovery) =
        Journal::open(dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
    assert_eq!(recovery.records, 0);
    let records: Vec<_> = (1..=count).map(record).collect();
    journal.append(&records).expect("append");
    journal.sync().expect("sync");
    journal.path.clone()
}

#[test]
fn records_come_back_in_order_and_appending_continues_the_sequence() {
    let dir = temp_dir("order");
    write(&dir, 10);
    let mut records = Vec::new();
    let (mut journal, recovery) =
        Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, r| records.push(r)).expect("reopen");
    assert_eq!(records, (1..=10).map(record).collect::<Vec<_>>());
    assert!(recovery.torn_tail.is_none());
    journal.append(&[record(11)]).expect("append");
    drop(journal);
    let contents = read(&dir).expect("read");
    assert_eq!((contents.records.len(), contents.torn_tail), (11, None));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_tail_follows_appends_and_rotation_from_any_sequence() {
    let dir = temp_dir("tail");
    write(&dir, 10);
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
    let mut tail = Tail::new(&dir, None);
    let mut out = Vec::new();
    // Never past what the caller says is written, nor past `max`.
    assert_eq!(tail.read(4, 100, &mut out).expect("read"), 4);
    assert_eq!(tail.read(10, 3, &mut out).expect("read"), 3);
    assert_eq!(tail.read(10, 100, &mut out).expect("read"), 3);
    assert_eq!(tail.read(10, 100, &mut out).expect("read"), 0);
    // The next segment starts at 11 (forced rotation); the tail follows it.
    journal.segment_size = SEGMENT_SIZE_MAX;
    journal.append(&(11..=25).map(record).collect::<Vec<_>>()).expect("append");
    assert_eq!(segments(&dir).expect("segments").len(), 2);
    assert_eq!(tail.read(25, 100, &mut out).expect("read"), 15);
    assert_eq!(out, (1..=25).map(record).collect::<Vec<_>>());
    assert_eq!(tail.next_sequence(), 26);
    // Seeking lands on the record asked for, in either segment, or just past the end.
    for at in [1, 5, 10, 11, 17, 25, 26] {
        let mut tail = Tail::new(&dir, None);
        tail.seek(at, 25).expect("seek");
        out.clear();
        tail.read(25, 100, &mut out).expect("read");
        assert_eq!(out, (at..=25).map(record).collect::<Vec<_>>(), "seek to {at}");
    }
    assert!(Tail::new(&dir, None).seek(30, 25).is_err(), "past the end");
    // Damage in a written record is named, never skipped.
    let first = segments(&dir).expect("segments")[0].clone();
    let mut bytes = fs::read(&first).expect("read");
    let size = bytes.len() / 10;
    bytes[2 * size + 30] ^= 1;
    fs::write(&first, &bytes).expect("write");
    let mut tail = Tail::new(&dir, None);
    out.clear();
    match tail.read(25, 100, &mut out) {
        Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, 2 * size as u64),
        other => panic!("expected damage at record 3: {other:?}"),
    }
    assert_eq!(out.len(), 2);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_data_directory_keeps_its_instance_id() {
    let dir = temp_dir("instance");
    let id = instance(&dir).expect("drawn");
    assert_eq!(id.len(), 16);
    assert_eq!(instance(&dir).expect("kept"), id);
    assert_ne!(instance(&temp_dir("instance-other")).expect("drawn"), id);
    let _ = fs::remove_dir_all(temp_dir("instance-other"));
    fs::write(dir.join("journal/instance"), "nonsense\n").expect("write");
    assert!(instance(&dir).is_err());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_tail_is_cut_and_reported_at_every_length() {
    let dir = temp_dir("torn");
    let path = write(&dir, 3);
    let whole = fs::read(&path).expect("read");
    let record_size = whole.len() / 3;
    for cut in (2 * record_size + 1)..whole.len() {
        fs::write(&path, &whole[..cut]).expect("tear");
        let (_, recovery) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("recovers");
        assert_eq!(recovery.records, 2, "cut at {cut}");
        let (_, offset, dropped) = recovery.torn_tail.clone().expect("reported");
        assert_eq!((offset, dropped), ((2 * record_size) as u64, (cut - 2 * record_size) as u64));
        assert_eq!(fs::metadata(&path).expect("metadata").len(), (2 * record_size) as u64);
    }
    // Zeros where the last record should be (the file grew, the data never landed).
    let mut zeroed = whole.clone();
    zeroed[2 * record_size..].fill(0);
    fs::write(&path, &zeroed).expect("write");
    let (_, recovery) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("recovers");
    assert_eq!(recovery.records, 2);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_flipped_byte_in_the_last_synced_record_is_corruption_not_a_torn_tail() {
    let dir = temp_dir("flipped");
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
    journal.commit(&(1..=3).map(record).collect::<Vec<_>>(), true).expect("commit");
    // The head says all three were synced (as the journal thread writes it each second).
    journal.sync_head().expect("head");
    let path = journal.path.clone();
    drop(journal);
    let whole = fs::read(&path).expect("read");
    let record_size = whole.len() / 3;
    let mut flipped = whole.clone();
    flipped[2 * record_size + 40] ^= 0x01;
    fs::write(&path, &flipped).expect("write");
    match Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}) {
        Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, (2 * record_size) as u64),
        other => panic!("a synced record damaged is corruption: {other:?}"),
    }
    assert!(matches!(read(&dir), Err(JournalError::Corrupt { .. })), "verify says so too");
    // Torn for real: past what the head says was synced, the same damage is a torn tail.
    fs::write(&path, &whole).expect("restore");
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
    journal.commit(&[record(4)], true).expect("commit, no head yet");
    drop(journal);
    let mut torn = fs::read(&path).expect("read");
    let length = torn.len();
    torn.truncate(length - 10);
    fs::write(&path, &torn).expect("tear");
    let (_, recovery) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("torn");
    assert_eq!(recovery.records, 3);
    assert!(recovery.torn_tail.is_some());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_lost_or_rolled_back_newest_segment_is_refused() {
    let dir = temp_dir("lost");
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
    journal.commit(&(1..=5).map(record).collect::<Vec<_>>(), true).expect("commit");
    journal.set_segment_size(1);
    journal.commit(&(6..=8).map(record).collect::<Vec<_>>(), true).expect("a second segment");
    let newest = journal.path.clone();
    let older_copy = fs::read(&newest).expect("read");
    journal.set_segment_size(SEGMENT_SIZE_MAX);
    journal.commit(&(9..=12).map(record).collect::<Vec<_>>(), true).expect("commit");
    journal.sync_head().expect("head");
    drop(journal);
    // An older copy of the newest segment put back: four synced records gone.
    let whole = fs::read(&newest).expect("read");
    fs::write(&newest, &older_copy).expect("roll back");
    let error = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect_err("refused");
    assert!(matches!(error, JournalError::Lost { durable: 12, .. }), "{error}");
    assert!(error.to_string().contains("it ends at record 8"), "{error}");
    assert!(matches!(read(&dir), Err(JournalError::Lost { .. })), "verify says so too");
    // The newest segment deleted: named by the head, so missed.
    fs::remove_file(&newest).expect("remove");
    let error = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect_err("refused");
    assert!(error.to_string().contains("its newest segment, 00000000000000000006.journal, is gone"), "{error}");
    assert!(error.needs_operator());
    // Put back whole, all is well; an operator may also accept a loss.
    fs::write(&newest, &whole).expect("restore");
    assert_eq!(read(&dir).expect("whole").records.len(), 12);
    fs::write(&newest, &older_copy).expect("roll back");
    let (journal, recovery) =
        Journal::open(&dir, SyncPolicy::Always, Damage::Truncate, None, |_, _| {}).expect("accepted");
    assert!(recovery.accepted_loss.is_some());
    assert_eq!(journal.last_sequence(), 8);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_restart_replays_from_the_latest_durable_restart_point() {
    let dir = temp_dir("restart");
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
    journal.commit(&(1..=10).map(record).collect::<Vec<_>>(), true).expect("commit");
    journal.set_segment_size(1);
    let restart = Record::Restart { window: 2, sequence: 11, low_water: 7, reference_sequence: 9 };
    journal.commit(&[restart, record(12)], true).expect("a restart point in a new segment");
    journal.commit(&[record(13)], true).expect("commit");
    drop(journal);
    let mut replayed = Vec::new();
    let (journal, recovery) =
        Journal::recover(&dir, SyncPolicy::Always, Damage::Refuse, None, |sequence, _| replayed.push(sequence))
            .expect("recovers");
    assert_eq!(replayed, (7..=13).collect::<Vec<_>>(), "from the restart point's low water");
    assert_eq!((recovery.replayed_from, recovery.records, journal.last_sequence()), (7, 7, 13));
    drop(journal);
    let mut all = 0;
    Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| all += 1).expect("opens");
    assert_eq!(all, 13, "open reads everything");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn damage_before_valid_records_stops_start_up_unless_accepted() {
    let dir = temp_dir("corrupt");
    let path = write(&dir, 5);
    let mut bytes = fs::read(&path).expect("read");
    let record_size = bytes.len() / 5;
    bytes[record_size + 40] ^= 0x01;
    fs::write(&path, &bytes).expect("write");
    match Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}) {
        Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, record_size as u64),
        other => panic!("expected corruption at record 2: {other:?}"),
    }
    assert!(matches!(read(&dir), Err(JournalError::Corrupt { .. })));
    // The operator accepts the loss: the journal is cut there and goes on.
    let mut records = Vec::new();
    let (mut journal, recovery) =
        Journal::open(&dir, SyncPolicy::Always, Damage::Truncate, None, |_, r| records.push(r)).expect("accepted");
    assert_eq!(records, vec![record(1)]);
    assert!(recovery.accepted_damage.is_some());
    journal.append(&[record(2)]).expect("append");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn segments_rotate_and_a_gap_in_sequences_is_refused() {
    let dir = temp_dir("rotate");
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |_, _| {}).expect("open");
    journal.append(&[record(1)]).expect("append");
    journal.segment_size = SEGMENT_SIZE_MAX;
    journal.append(&[record(2), record(3)]).expect("append");
    drop(journal);
    let names: Vec<_> = segments(&dir).expect("segments").iter().map(|p| p.file_name().map(|n| n.to_owned())).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(read(&dir).expect("read").records.len(), 3);
    // Losing the head of the log is never read as a shorter log.
    fs::remove_file(&segments(&dir).expect("segments")[0]).expect("remove");
    assert!(matches!(read(&dir), Err(JournalError::Missing { retained: 1, first: Some(2), .. })));
    assert!(matches!(
        Journal::open(&dir, SyncPolicy::Never, Damage::Truncate, None, |_, _| {}),
        Err(JournalError::Missing { retained: 1, first: Some(2), .. })
    ));
    let _ = fs::remove_dir_all(&dir);
}

/// A journal of `segments` segments of `per_segment` records each.
fn segmented(name: &str, segments: u64, per_segment: u64) -> PathBuf {
    let dir = temp_dir(name);
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |_, _| {}).expect("open");
    journal.set_segment_size(1);
    for segment in 0..segments {
        let first = segment * per_segment + 1;
        journal.append(&(first..first + per_segment).map(record).collect::<Vec<_>>()).expect("append");
    }
    dir
}

#[test]
fn retention_removes_whole_segments_before_a_sequence_and_recovery_starts_after_them() {
    let dir = segmented("retention", 4, 10);
    assert_eq!(segments(&dir).expect("segments").len(), 4);
    // Record 25 is in the third segment (21..=30): the two before it go.
    let removed = remove_before(&dir, 25).expect("removes");
    assert_eq!((removed.segments, removed.first_sequence), (2, 21));
    assert!(removed.bytes > 0);
    assert_eq!(fs::read_to_string(dir.join("retained")).expect("marker").trim(), "21");
    let mut sequences = Vec::new();
    let (mut journal, recovery) =
        Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |sequence, _| sequences.push(sequence))
            .expect("recovers");
    assert_eq!(sequences, (21..=40).collect::<Vec<_>>());
    assert_eq!((recovery.first_sequence, recovery.records), (21, 20));
    journal.append(&[record(41)]).expect("appends after");
    drop(journal);
    assert_eq!(read(&dir).expect("reads").records.len(), 21);
    // Nothing at or after the segment being written is ever removed, and asking again
    // for less removes nothing.
    assert_eq!(remove_before(&dir, 41).expect("removes").segments, 1);
    assert_eq!(remove_before(&dir, 5).expect("nothing").segments, 0);
    assert!(!segments(&dir).expect("segments").is_empty());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_journal_shorter_than_retention_left_it_is_refused() {
    let dir = segmented("retention-missing", 3, 10);
    remove_before(&dir, 15).expect("removes");
    // Someone removes one more segment by hand: a hole at the head, never a shorter log.
    fs::remove_file(&segments(&dir).expect("segments")[0]).expect("remove");
    let error = read(&dir).err().expect("refused");
    assert!(matches!(error, JournalError::Missing { retained: 11, first: Some(21), .. }), "{error}");
    assert!(error.to_string().contains("kept from record 11 on, but its first segment starts at 21"), "{error}");
    for damage in [Damage::Refuse, Damage::Truncate] {
        assert!(matches!(
            Journal::open(&dir, SyncPolicy::Never, damage, None, |_, _| {}),
            Err(JournalError::Missing { .. })
        ));
    }
    // A crash between the marker and the removals leaves more than the marker says: fine.
    let dir = segmented("retention-interrupted", 3, 10);
    write_atomically(&dir.join("retained"), b"21\n").expect("marker");
    assert_eq!(read(&dir).expect("reads").records.len(), 30);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_that_names_another_sequence_is_not_written() {
    let dir = temp_dir("checkpoint");
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |_, _| {}).expect("open");
    let checkpoint = |sequence| Record::Checkpoint { window: 1, sequence, low_water: 1, reference_sequence: 0 };
    let error = journal.commit(&[record(1), checkpoint(3)], false).expect_err("refused");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert_eq!(journal.last_sequence(), 0, "nothing of the batch was written");
    journal.commit(&[record(1), checkpoint(2)], false).expect("at its sequence");
    drop(journal);
    assert_eq!(read(&dir).expect("reads").records[1], checkpoint(2));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn io_uring_writes_and_syncs_the_same_bytes() {
    let dir = temp_dir("uring");
    let (mut journal, _) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
    assert!(journal.use_io_uring(), "this machine allows io_uring; the test needs it");
    let records: Vec<_> = (1..=1_000).map(record).collect();
    for chunk in records.chunks(100) {
        journal.commit(chunk, true).expect("commit");
        assert!(!journal.unsynced);
    }
    journal.commit(&[record(1_001)], false).expect("commit");
    drop(journal);
    let contents = read(&dir).expect("read");
    assert_eq!(contents.records.len(), 1_001);
    assert_eq!(contents.records[..1_000], records[..]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn policies_parse_and_the_shard_count_is_pinned() {
    assert_eq!("always".parse(), Ok(SyncPolicy::Always));
    assert_eq!("interval:500".parse(), Ok(SyncPolicy::Interval(Duration::from_micros(500))));
    assert!("interval:0".parse::<SyncPolicy>().is_err());
    assert!("sometimes".parse::<SyncPolicy>().is_err());
    let dir = temp_dir("shards");
    check_shards(&dir, 2).expect("recorded");
    check_shards(&dir, 2).expect("same");
    assert!(matches!(check_shards(&dir, 3), Err(JournalError::Shards { written: 2, .. })));
    check_node(&dir, 7).expect("recorded");
    check_node(&dir, 7).expect("same");
    assert!(matches!(check_node(&dir, 0), Err(JournalError::Node { written: 7, .. })));
    let _ = fs::remove_dir_all(&dir);
}
