//! Reading the files an operator's config names (the config itself,
//! certificates and keys, the broker's password file) without trusting
//! them: only a regular file is read (a FIFO would block forever,
//! `/dev/zero` would never end), and at most a bounded number of bytes.
//!
//! The type and size are taken from the opened file (`fstat`), not from the
//! path, so the path cannot be swapped between the check and the read; the
//! read itself stops one byte past the limit, so a file that grows after
//! the check is refused too. The file is opened with `O_NONBLOCK`, so
//! opening a FIFO returns at once instead of waiting for a writer.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The most bytes Ferry reads from its config file, a certificate or a key:
/// 1 MiB (a config with every key explained is about 12 KiB, a certificate
/// chain a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The most bytes Ferry reads from a broker's password file: 16 MiB (about
/// 80,000 `$7$` users).
pub const MAX_PASSWORD_FILE_BYTES: u64 = 16 << 20;

/// Why a file was not read.
#[derive(Debug)]
pub enum FileError {
    /// It could not be opened or read.
    Io(std::io::Error),
    /// It is not a regular file (after following symlinks): what it is.
    NotRegular(&'static str),
    /// It is larger than the limit.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
        /// Its size as `fstat` tells it (at least `limit + 1`).
        size: u64,
    },
    /// It is not UTF-8 text (only from [`read_text`]).
    NotUtf8,
}

impl FileError {
    /// Whether the file could not be opened or read at all (missing, not
    /// permitted), as opposed to refused for what it is.
    pub fn is_io(&self) -> bool {
        matches!(self, FileError::Io(_))
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io(e) => write!(f, "{e}"),
            FileError::NotRegular(what) => write!(f, "is {what}, not a regular file"),
            FileError::TooLarge { limit, size } => {
                write!(
                    f,
                    "is larger than the limit of {limit} bytes ({size} bytes)"
                )
            }
            FileError::NotUtf8 => f.write_str("is not UTF-8 text"),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FileError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The contents of the regular file at `path` (symlinks followed), at most
/// `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let (file, meta) = open_regular(path)?;
    let size = meta.len();
    if size > limit {
        return Err(FileError::TooLarge { limit, size });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(FileError::Io)?;
    let read = bytes.len() as u64;
    if read > limit {
        return Err(FileError::TooLarge { limit, size: read });
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|_| FileError::NotUtf8)
}

/// Opens `path` for reading without blocking (a FIFO) or taking a terminal,
/// and checks that what was opened is a regular file; returns it with its
/// metadata (`fstat`: its size and mode are those of the file opened).
pub fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), FileError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(FileError::Io)?;
    let meta = file.metadata().map_err(FileError::Io)?;
    if meta.is_file() {
        return Ok((file, meta));
    }
    Err(FileError::NotRegular(kind(&meta.file_type())))
}

/// What a file that is not a regular file is, in words.
pub fn kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        let e = read_bounded(&path, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "is larger than the limit of 4 bytes (5 bytes)"
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_text(&path, 5).unwrap_err().to_string(),
            "is not UTF-8 text"
        );
    }

    #[cfg(unix)]
    #[test]
    fn devices_fifos_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let cases: [(&Path, &str); 4] = [
            (&fifo, "is a FIFO (named pipe), not a regular file"),
            (
                Path::new("/dev/zero"),
                "is a character device, not a regular file",
            ),
            (&link, "is a character device, not a regular file"),
            (dir.path(), "is a directory, not a regular file"),
        ];
        for (path, message) in cases {
            let e = read_bounded(path, MAX_FILE_BYTES).unwrap_err();
            assert_eq!(e.to_string(), message, "{}", path.display());
        }
        assert!(read_bounded(&dir.path().join("missing"), 1)
            .unwrap_err()
            .is_io());
    }
}
