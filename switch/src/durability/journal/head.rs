//! A shard journal's head: how long the journal is known to be, kept apart from its
//! segments, so a lost or rolled-back segment is noticed instead of read as a shorter
//! journal, and where a restart may begin replaying.
//!
//! ```text
//! DATA_DIR/journal/shard-N/head   two 64-byte copies, at offsets 0 and 4096 (other pages):
//!   offset size field
//!        0    8 magic "SWJHEAD1"
//!        8    8 generation (the copy with the higher valid one is current)
//!       16    8 durable: every record up to it was synced before this was written
//!       24    8 segment: the first sequence of the newest segment then
//!       32    8 restart: the sequence of the latest checkpoint or restart point durable
//!       40    8 low water: the record a replay must start at to use it (0: none yet)
//!       48    8 window: the last window cut at `restart`
//!       56    4 CRC32C of bytes 0..56
//!       60    4 zero
//! ```
//!
//! Invariants: a head is written only after what it names is synced (so it never claims
//! more than the disk holds); each write goes to the older copy and is synced, so a crash
//! while writing leaves the other copy whole. Both copies damaged is an error, never a
//! journal without a head.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SWJHEAD1";
const COPY: usize = 64;
/// Where the second copy starts.
const SECOND: u64 = 4096;

/// What a head says (all zero: nothing yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    pub generation: u64,
    /// Every record up to this sequence was synced.
    pub durable: u64,
    /// The first sequence of the newest segment.
    pub segment: u64,
    /// The latest durable checkpoint or restart point (0: none).
    pub restart: u64,
    /// Where a replay that uses `restart` begins.
    pub low_water: u64,
    /// The last window cut as of `restart`.
    pub window: u64,
}

impl Head {
    /// (restart, low water, window).
    pub fn restart_point(&self) -> (u64, u64, u64) {
        (self.restart, self.low_water, self.window)
    }

    fn encode(&self) -> [u8; COPY] {
        let mut bytes = [0u8; COPY];
        bytes[..8].copy_from_slice(MAGIC);
        for (index, value) in
            [self.generation, self.durable, self.segment, self.restart, self.low_water, self.window].iter().enumerate()
        {
            bytes[8 + index * 8..16 + index * 8].copy_from_slice(&value.to_le_bytes());
        }
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &bytes[..56]) as u32;
        bytes[56..60].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; COPY] = bytes.get(..COPY)?.try_into().ok()?;
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &bytes[..56]) as u32;
        if &bytes[..8] != MAGIC || bytes[56..60] != crc.to_le_bytes() {
            return None;
        }
        let at = |index: usize| u64::from_le_bytes(bytes[8 + index * 8..16 + index * 8].try_into().unwrap_or_default());
        Some(Self {
            generation: at(0),
            durable: at(1),
            segment: at(2),
            restart: at(3),
            low_water: at(4),
            window: at(5),
        })
    }
}

/// The head file of shard directory `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("head")
}

/// The current head of `dir`: `Ok(None)` without a head file (a new journal, or one
/// written before heads were kept); an error when neither copy is whole.
pub fn read(dir: &Path) -> io::Result<Option<Head>> {
    let bytes = match fs::read(path(dir)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let first = Head::decode(&bytes);
    let second = bytes.get(SECOND as usize..).and_then(Head::decode);
    match (first, second) {
        (Some(a), Some(b)) => Ok(Some(if a.generation >= b.generation { a } else { b })),
        (Some(head), None) | (None, Some(head)) => Ok(Some(head)),
        (None, None) => {
            Err(io::Error::new(io::ErrorKind::InvalidData, "both copies of the journal's head are damaged"))
        }
    }
}

/// Writes heads to one shard's head file.
#[derive(Debug)]
pub struct HeadFile {
    file: File,
    current: Head,
}

impl HeadFile {
    /// Opens (or creates, syncing its directory) `dir`'s head file, whose current head is
    /// `current` (as `read` found it; default for a new file).
    pub fn open(dir: &Path, current: Option<Head>) -> io::Result<Self> {
        let path = path(dir);
        let created = !path.exists();
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        if created {
            File::open(dir)?.sync_all()?;
        }
        Ok(Self { file, current: current.unwrap_or_default() })
    }

    pub fn current(&self) -> Head {
        self.current
    }

    /// Writes `head` (its generation set here) over the older copy, synced.
    pub fn write(&mut self, mut head: Head) -> io::Result<()> {
        head.generation = self.current.generation + 1;
        let offset = if head.generation.is_multiple_of(2) { SECOND } else { 0 };
        self.file.write_all_at(&head.encode(), offset)?;
        self.file.sync_data()?;
        self.current = head;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newer_whole_copy_wins_and_two_damaged_copies_are_an_error() {
        let dir = std::env::temp_dir().join(format!("switch-head-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        assert_eq!(read(&dir).expect("none"), None);
        let mut file = HeadFile::open(&dir, None).expect("open");
        for durable in 1..=5 {
            file.write(Head { durable, segment: 1, ..Head::default() }).expect("write");
        }
        let head = read(&dir).expect("read").expect("there");
        assert_eq!((head.generation, head.durable), (5, 5));
        // The newest copy torn: the other one, one write older, stands.
        let mut bytes = fs::read(path(&dir)).expect("read");
        bytes[10] ^= 1;
        fs::write(path(&dir), &bytes).expect("write");
        assert_eq!(read(&dir).expect("read").map(|h| h.durable), Some(4));
        bytes[SECOND as usize + 20] ^= 1;
        fs::write(path(&dir), &bytes).expect("write");
        assert!(read(&dir).is_err(), "no whole copy");
        let _ = fs::remove_dir_all(&dir);
    }
}
