//! A directory served to peers, as a security boundary: a request names a path relative to
//! the root, and only regular files beneath it are opened. The file protocol and HTTP's
//! static files both open through [`Root::open`], so the confinement exists once.
//!
//! The boundary: `..`, absolute paths and symlinks leading out are refused, and files are
//! opened with openat2(2) confined beneath the root (`RESOLVE_BENEATH`), so swapping a
//! directory for a symlink between a check and the open does not lead out either. Where
//! the kernel has openat2, the kernel's confinement is the check: a request costs a
//! `fstatat`, the `openat2` and a `fstat`, not a `readlink` per component. A symlink the
//! kernel refuses (an absolute one, even if it leads back inside) is looked at again the
//! slow way: resolved in full, checked against the root and opened without following
//! links. On kernels before 5.6 that slow way is the only one (the path check alone).

use std::ffi::{CStr, OsStr};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The longest path a request may name, in bytes: Linux's PATH_MAX less its NUL.
pub const MAX_PATH: usize = 4095;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An empty path, one containing a NUL byte, or one too long to name a file.
    InvalidPath,
    /// `..`, an absolute path, or a symlink leading outside the root.
    OutsideRoot,
    NotFound,
    /// A directory (HTTP may serve its `index.html` instead).
    Directory,
    /// A FIFO, a device, a socket.
    NotRegularFile,
    PermissionDenied,
    /// Any other failure to open (a symlink loop, an I/O error).
    CannotOpen,
}

impl Refusal {
    /// The reason in a few words (the file protocol's `ERR` line says it).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::InvalidPath => "invalid path",
            Refusal::OutsideRoot => "outside the root",
            Refusal::NotFound => "not found",
            Refusal::Directory | Refusal::NotRegularFile => "not a regular file",
            Refusal::PermissionDenied => "permission denied",
            Refusal::CannotOpen => "cannot open",
        }
    }

    fn from_io(e: &io::Error) -> Refusal {
        match e.kind() {
            io::ErrorKind::NotFound => Refusal::NotFound,
            io::ErrorKind::PermissionDenied => Refusal::PermissionDenied,
            _ => match e.raw_os_error() {
                // `file/more`: a path through a regular file names nothing.
                Some(libc::ENOTDIR) => Refusal::NotFound,
                Some(libc::ENAMETOOLONG) => Refusal::InvalidPath,
                Some(libc::EXDEV) => Refusal::OutsideRoot,
                _ => Refusal::CannotOpen,
            },
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// A regular file opened beneath the root.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// The directory files are served from. Cheap to clone (one per worker loop).
#[derive(Debug, Clone)]
pub struct Root {
    /// Canonical, resolved once at start: the slow way checks every request against it.
    path: Arc<Path>,
    /// The root, opened (O_PATH) once: files are opened beneath it.
    dir: Arc<OwnedFd>,
    /// The kernel has openat2(2): its confinement is the check.
    beneath: bool,
}

impl Root {
    /// Serves `root`, which must be a readable directory.
    pub fn new(root: &Path) -> io::Result<Root> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a directory",
            ));
        }
        // Listing it proves it is readable, so the operator hears now rather than per request.
        fs::read_dir(&root)?;
        let dir: OwnedFd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&root)?
            .into();
        let beneath = openat2(&dir, c".", libc::O_PATH | libc::O_DIRECTORY, 0).is_ok();
        if !beneath {
            log::info!("no openat2(2) here: requests are confined by a path check alone");
        }
        Ok(Root {
            path: root.into(),
            dir: Arc::new(dir),
            beneath,
        })
    }

    /// The canonical root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `request` (a path relative to the root) names.
    pub fn open(&self, request: &[u8]) -> Result<Opened, Refusal> {
        check_relative(request)?;
        if !self.beneath {
            return self.open_resolved(request);
        }
        let mut buf = [0u8; MAX_PATH + 1];
        let path = c_path(request, &mut buf)?;
        // Looking before opening keeps FIFOs and devices from being opened at all (opening
        // some devices has effects). The look is not confined, but says only the kind of
        // file; the confined open decides.
        let meta = stat_at(&self.dir, path).map_err(|e| Refusal::from_io(&e))?;
        match meta.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(Refusal::Directory),
            _ => return Err(Refusal::NotRegularFile),
        }
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        match openat2(&self.dir, path, flags, resolve) {
            Ok(fd) => regular(File::from(fd)),
            // A symlink the kernel will not follow beneath the root: absolute, or leading
            // out. The slow way tells the two apart.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => self.open_resolved(request),
            Err(e) => Err(Refusal::from_io(&e)),
        }
    }

    /// The slow way: every symlink resolved, the result checked against the root, then
    /// opened without following links (confined beneath the root where openat2 exists).
    fn open_resolved(&self, request: &[u8]) -> Result<Opened, Refusal> {
        let path = resolve(&self.path, request)?;
        open_regular(&self.path, &self.dir, &path)
    }
}

/// Refuses what cannot name a file beneath the root without looking at the disk.
fn check_relative(request: &[u8]) -> Result<(), Refusal> {
    if request.is_empty() || request.contains(&0) {
        return Err(Refusal::InvalidPath);
    }
    // Unix paths are bytes: a non-UTF-8 name is as valid as any other.
    for component in Path::new(OsStr::from_bytes(request)).components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            // `..` is refused even where it would stay inside: there is no need for it.
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::OutsideRoot)
            }
        }
    }
    Ok(())
}

/// `bytes` NUL-terminated in `buf`, without allocating.
fn c_path<'a>(bytes: &[u8], buf: &'a mut [u8; MAX_PATH + 1]) -> Result<&'a CStr, Refusal> {
    if bytes.len() > MAX_PATH {
        return Err(Refusal::InvalidPath);
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[bytes.len()] = 0;
    // `check_relative` refused NUL bytes, so the first NUL is the one just written.
    CStr::from_bytes_until_nul(&buf[..=bytes.len()]).map_err(|_| Refusal::InvalidPath)
}

/// Maps a request (a path relative to `root`) to the canonical path it names, refusing
/// anything that is not inside `root`. `root` must itself be canonical.
fn resolve(root: &Path, request: &[u8]) -> Result<PathBuf, Refusal> {
    check_relative(request)?;
    // Canonicalising resolves every symlink; the prefix test then catches a link that
    // leads out (`Path::starts_with` compares whole components: `/srv2` is not in `/srv`).
    let canonical = root
        .join(Path::new(OsStr::from_bytes(request)))
        .canonicalize()
        .map_err(|e| Refusal::from_io(&e))?;
    if !canonical.starts_with(root) {
        return Err(Refusal::OutsideRoot);
    }
    Ok(canonical)
}

/// Opens `path`, which `resolve` returned, if it is a regular file. Where the kernel has
/// openat2(2), the open itself is confined to the root (`root_dir`), which closes the race
/// between `resolve`'s check and the open.
fn open_regular(root: &Path, root_dir: &OwnedFd, path: &Path) -> Result<Opened, Refusal> {
    // Looking before opening keeps FIFOs and devices from being opened at all.
    let meta = fs::metadata(path).map_err(|e| Refusal::from_io(&e))?;
    if meta.is_dir() {
        return Err(Refusal::Directory);
    }
    if !meta.is_file() {
        return Err(Refusal::NotRegularFile);
    }
    // Something may be swapped in after the look: O_NONBLOCK keeps a FIFO from blocking the
    // loop in open(2), O_NOFOLLOW refuses a symlink put in place of the file, and the fstat
    // of the open handle has the final word. A directory on the way replaced by a symlink
    // leading out is refused by openat2's RESOLVE_BENEATH.
    let relative = path.strip_prefix(root).map_err(|_| Refusal::OutsideRoot)?;
    let mut buf = [0u8; MAX_PATH + 1];
    let c_relative = c_path(relative.as_os_str().as_bytes(), &mut buf)?;
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let file = match openat2(root_dir, c_relative, flags, resolve) {
        Ok(fd) => File::from(fd),
        // No openat2 (Linux before 5.6, or a seccomp filter): the path-based check stands.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
                .open(path)
                .map_err(|e| Refusal::from_io(&e))?
        }
        Err(e) => return Err(Refusal::from_io(&e)),
    };
    regular(file)
}

/// The open file if it is (still) a regular one, with its size and modification time.
fn regular(file: File) -> Result<Opened, Refusal> {
    let meta = file.metadata().map_err(|e| Refusal::from_io(&e))?;
    if meta.is_dir() {
        return Err(Refusal::Directory);
    }
    if !meta.is_file() {
        return Err(Refusal::NotRegularFile);
    }
    Ok(Opened {
        size: meta.len(),
        modified: meta.modified().ok(),
        file,
    })
}

/// fstatat(2) of `path` under `dir`, following symlinks.
fn stat_at(dir: &OwnedFd, path: &CStr) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data, filled in by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `path` NUL-terminated, `st` a stat the call may write.
    if unsafe { libc::fstatat(dir.as_raw_fd(), path.as_ptr(), &mut st, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// openat2(2) of `path` under `dir` with `flags` (O_CLOEXEC added) and `resolve`.
fn openat2(dir: &OwnedFd, path: &CStr, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: `dir` is an open descriptor, `path` a NUL-terminated string and `how` an
    // open_how of the size passed; all outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What the tests of modules that serve files share.
#[cfg(test)]
pub(crate) mod testing {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory under the system temp dir, removed when dropped.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("multiconn-unit-{}-{n}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TempDir;
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root with `small`, `sub/inner`, links inside (`inside` → `small`, and `absolute`
    /// → the absolute path of `small`) and out (`escape` → the secret next to the root,
    /// `outdir` → the directory holding the root).
    fn fixture(name: &str) -> (TempDir, Root) {
        let dir = TempDir::new(name);
        let root = dir.0.join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("small"), b"hello file\n").unwrap();
        fs::write(root.join("sub/inner"), b"inner").unwrap();
        fs::write(dir.0.join("secret"), b"secret").unwrap();
        symlink("small", root.join("inside")).unwrap();
        symlink(root.join("small"), root.join("absolute")).unwrap();
        symlink(dir.0.join("secret"), root.join("escape")).unwrap();
        symlink(&dir.0, root.join("outdir")).unwrap();
        let served = Root::new(&root).unwrap();
        (dir, served)
    }

    fn read(root: &Root, request: &[u8]) -> Result<Vec<u8>, Refusal> {
        use std::io::Read;
        let mut opened = root.open(request)?;
        let mut got = Vec::new();
        opened.file.read_to_end(&mut got).unwrap();
        assert_eq!(got.len() as u64, opened.size);
        Ok(got)
    }

    /// Files and links inside are opened, both ways (kernel-confined, and resolved by
    /// path as on kernels without openat2); every way out is refused, both ways.
    #[test]
    fn inside_opens_outside_is_refused() {
        let (_dir, root) = fixture("both");
        let slow = Root {
            beneath: false,
            ..root.clone()
        };
        type Case = (&'static [u8], Result<&'static [u8], Refusal>);
        let cases: [Case; 14] = [
            (b"small", Ok(b"hello file\n")),
            (b"./sub/inner", Ok(b"inner")),
            (b"inside", Ok(b"hello file\n")),
            (b"absolute", Ok(b"hello file\n")),
            (b"../secret", Err(Refusal::OutsideRoot)),
            (b"sub/../small", Err(Refusal::OutsideRoot)),
            (b"/etc/passwd", Err(Refusal::OutsideRoot)),
            (b"escape", Err(Refusal::OutsideRoot)),
            (b"outdir/secret", Err(Refusal::OutsideRoot)),
            (b"missing", Err(Refusal::NotFound)),
            (b"small/more", Err(Refusal::NotFound)),
            (b"sub", Err(Refusal::Directory)),
            (b".", Err(Refusal::Directory)),
            (b"sm\0all", Err(Refusal::InvalidPath)),
        ];
        for (request, expected) in cases {
            for root in [&root, &slow] {
                let got = read(root, request);
                assert_eq!(
                    got.as_deref().map_err(|e| *e),
                    expected,
                    "{} (beneath {})",
                    String::from_utf8_lossy(request),
                    root.beneath
                );
            }
        }
        let long = vec![b'a'; MAX_PATH + 1];
        assert_eq!(read(&root, &long), Err(Refusal::InvalidPath));
        assert_eq!(read(&root, b""), Err(Refusal::InvalidPath));
    }

    /// The race a path check alone cannot close: a directory checked inside the root is
    /// swapped for a symlink leading out before the open. openat2's RESOLVE_BENEATH
    /// refuses it, where a plain open would have served the outside file.
    #[test]
    fn directory_swapped_after_the_check_does_not_lead_out() {
        let (dir, root) = fixture("swap");
        let checked = resolve(&root.path, b"sub/inner").unwrap();
        let outside = dir.0.join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("inner"), b"secret").unwrap();
        fs::rename(dir.0.join("root/sub"), dir.0.join("old-sub")).unwrap();
        symlink(&outside, dir.0.join("root/sub")).unwrap();
        assert_eq!(
            fs::read(&checked).unwrap(),
            b"secret",
            "the swap is in place"
        );
        let opened = open_regular(&root.path, &root.dir, &checked);
        assert_eq!(opened.map(|o| o.size), Err(Refusal::OutsideRoot));
        assert_eq!(read(&root, b"sub/inner"), Err(Refusal::OutsideRoot));
        // A link that stays inside is still followed.
        fs::remove_file(dir.0.join("root/sub")).unwrap();
        symlink("empty-dir", dir.0.join("root/sub")).unwrap();
        fs::create_dir_all(dir.0.join("root/empty-dir")).unwrap();
        fs::write(dir.0.join("root/empty-dir/inner"), b"in").unwrap();
        let opened = open_regular(&root.path, &root.dir, &checked);
        assert_eq!(opened.map(|o| o.size), Ok(2));
        assert_eq!(read(&root, b"sub/inner").as_deref(), Ok(&b"in"[..]));
    }

    /// The root must be an existing directory.
    #[test]
    fn root_must_be_a_directory() {
        let (dir, _) = fixture("root");
        assert!(Root::new(&dir.0.join("root/small")).is_err());
        assert!(Root::new(&dir.0.join("nowhere")).is_err());
        let root = Root::new(&dir.0.join("root/sub/..")).unwrap();
        assert_eq!(root.path(), dir.0.join("root").canonicalize().unwrap());
        assert!(root.beneath, "this kernel has openat2");
    }
}
