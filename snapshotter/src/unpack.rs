//! Safe extraction of (hostile) OCI layer tarballs into an empty directory.
//!
//! Every entry path is resolved component by component from a directory fd of the layer root with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`, so no symlink (whether from this layer or planted by an earlier entry)
//! is ever followed while creating an entry. `..` components, absolute paths, writes through symlinks and
//! hardlinks to anything outside the layer refuse the whole layer. OCI whiteouts become overlayfs whiteouts.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode,
    SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;

use crate::digest::HashingReader;
use crate::error::{Error, IoContext, Result};
use crate::Compression;

/// OCI whiteout file name prefix.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque-directory marker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// overlayfs opaque-directory xattr.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// PAX prefix of extended attributes.
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Decompresses `blob`, extracts it into the empty directory `dest` and verifies that the sha256 of the
/// uncompressed stream equals `diff_id`. On error `dest` holds garbage the caller must remove.
pub fn unpack_blob(
    blob: &Path,
    compression: Compression,
    diff_id: &str,
    dest: &Path,
) -> Result<()> {
    let file = File::open(blob).ctx(|| format!("opening layer blob {}", blob.display()))?;
    let reader = io::BufReader::with_capacity(256 * 1024, file);
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .ctx(|| format!("layer {diff_id}: starting zstd decoder"))?,
        ),
    };
    let mut archive = tar::Archive::new(HashingReader::new(decompressed));
    extract(&mut archive, dest).map_err(|e| match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("layer {diff_id}: {m}")),
        other => other,
    })?;
    let mut rest = archive.into_inner();
    // Trailing padding after the end-of-archive blocks is part of the digested stream.
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| Error::InvalidInput(format!("layer {diff_id}: reading stream: {e}")))?;
    let (actual, _) = rest.finish();
    if actual != diff_id {
        return Err(Error::InvalidInput(format!(
            "layer diff id mismatch: expected {diff_id}, actual {actual}"
        )));
    }
    Ok(())
}

/// Extracts every entry of `archive` into the existing directory `dest`.
pub fn extract<R: Read>(archive: &mut tar::Archive<R>, dest: &Path) -> Result<()> {
    let root = open_dir_path(dest)?;
    let mut ex = Extractor {
        root,
        dir_times: Vec::new(),
    };
    let entries = archive
        .entries()
        .map_err(|e| Error::InvalidInput(format!("reading tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::InvalidInput(format!("reading tar: {e}")))?;
        ex.entry(&mut entry)?;
    }
    ex.finish_dir_times();
    Ok(())
}

/// What a header says about an entry's ownership, mode, times and xattrs.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Extractor {
    root: OwnedFd,
    /// Directory mtimes are set at the end, after their children stopped changing them.
    dir_times: Vec<(Vec<OsString>, i64)>,
}

fn invalid(name: &str, what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("tar entry {name:?}: {what}"))
}

/// Splits a tar path into normal components; refuses absolute paths and `..`.
fn components(raw: &[u8], name: &str) -> Result<Vec<OsString>> {
    if raw.first() == Some(&b'/') {
        return Err(invalid(name, "absolute path escapes the layer"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err(invalid(name, "'..' component escapes the layer")),
            _ if c.contains(&0) => return Err(invalid(name, "NUL byte in path")),
            _ => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_dir_path(path: &Path) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening {}", path.display()))?;
    Ok(own_fd(fd))
}

/// Opens the directory `name` inside `dir` without following a symlink.
fn open_dir_at(dir: RawFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(Some(dir), name, flags, Mode::empty()).map(own_fd)
}

fn lstat_at(dir: RawFd, name: &OsStr) -> nix::Result<Option<nix::sys::stat::FileStat>> {
    match fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// `/proc/self/fd/<dir>/<name>`: a path that reaches `name` inside `dir` without re-resolving `dir`.
fn proc_path(dir: RawFd, name: &OsStr) -> std::path::PathBuf {
    Path::new(&format!("/proc/self/fd/{dir}")).join(name)
}

fn timespec(secs: i64) -> TimeSpec {
    TimeSpec::new(secs, 0)
}

impl Extractor {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let comps = components(&raw_path, &name)?;
        let mut kind = entry.header().entry_type();
        if kind == EntryType::Regular && raw_path.ends_with(b"/") {
            kind = EntryType::Directory; // pre-POSIX archives mark directories with a trailing slash
        }
        let meta = read_meta(entry, &name)?;

        let Some((last, prefix)) = comps.split_last() else {
            // The layer root itself ("./"): only a directory makes sense.
            if kind != EntryType::Directory {
                return Err(invalid(&name, "non-directory entry for the layer root"));
            }
            let root = self.root.as_raw_fd();
            apply_fd_meta(root, &meta, &name)?;
            self.dir_times.push((Vec::new(), meta.mtime));
            return Ok(());
        };
        let last_bytes = last.as_bytes();

        if last_bytes == OPAQUE_MARKER {
            let parent = self.walk(prefix, &name, true)?;
            return set_xattr_fd(parent.as_raw_fd(), OVERLAY_OPAQUE_XATTR, b"y")
                .ctx(|| format!("tar entry {name:?}: marking directory opaque"));
        }
        if let Some(hidden) = last_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(invalid(&name, "malformed whiteout"));
            }
            let hidden = OsStr::from_bytes(hidden);
            let parent = self.walk(prefix, &name, true)?;
            let dir = parent.as_raw_fd();
            remove_existing(dir, hidden, false, &name)?;
            mknodat(
                Some(dir),
                hidden,
                SFlag::S_IFCHR,
                Mode::empty(),
                makedev(0, 0),
            )
            .ctx(|| format!("tar entry {name:?}: creating whiteout"))?;
            return Ok(());
        }

        let parent = self.walk(prefix, &name, true)?;
        let dir = parent.as_raw_fd();
        match kind {
            EntryType::Directory => {
                let exists = remove_existing(dir, last, true, &name)?;
                if !exists {
                    mkdirat(Some(dir), last.as_os_str(), Mode::from_bits_truncate(0o700))
                        .ctx(|| format!("tar entry {name:?}: mkdir"))?;
                }
                let fd = open_dir_at(dir, last).ctx(|| format!("tar entry {name:?}: open dir"))?;
                apply_fd_meta(fd.as_raw_fd(), &meta, &name)?;
                self.dir_times.push((comps.clone(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(dir, last, false, &name)?;
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = openat(
                    Some(dir),
                    last.as_os_str(),
                    flags,
                    Mode::from_bits_truncate(0o600),
                )
                .map(own_fd)
                .ctx(|| format!("tar entry {name:?}: create"))?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).map_err(|e| {
                    Error::InvalidInput(format!("tar entry {name:?}: reading data: {e}"))
                })?;
                apply_fd_meta(file.as_raw_fd(), &meta, &name)?;
                futimens(
                    file.as_raw_fd(),
                    &timespec(meta.mtime),
                    &timespec(meta.mtime),
                )
                .ctx(|| format!("tar entry {name:?}: set times"))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid(&name, "symlink without target"))?
                    .into_owned();
                if target.contains(&0) {
                    return Err(invalid(&name, "NUL byte in symlink target"));
                }
                remove_existing(dir, last, false, &name)?;
                // The target is stored, never followed by the extractor, so it may point anywhere.
                symlinkat(OsStr::from_bytes(&target), Some(dir), last.as_os_str())
                    .ctx(|| format!("tar entry {name:?}: symlink"))?;
                apply_at_meta(dir, last, &meta, &name, false)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid(&name, "hardlink without target"))?
                    .into_owned();
                let tname = String::from_utf8_lossy(&target).into_owned();
                let tcomps = components(&target, &name).map_err(|_| {
                    invalid(
                        &name,
                        format!("hardlink target {tname:?} escapes the layer"),
                    )
                })?;
                let Some((tlast, tprefix)) = tcomps.split_last() else {
                    return Err(invalid(&name, "hardlink to the layer root"));
                };
                if tcomps == comps {
                    return Ok(()); // a link to itself changes nothing
                }
                let tparent = self.walk(tprefix, &name, false)?;
                match lstat_at(tparent.as_raw_fd(), tlast) {
                    Ok(Some(st)) if !is_dir(&st) => {}
                    Ok(_) => {
                        return Err(invalid(
                            &name,
                            format!("hardlink target {tname:?} is not a file of this layer"),
                        ))
                    }
                    Err(e) => {
                        return Err(Error::io(
                            format!("tar entry {name:?}: stat link target"),
                            e,
                        ))
                    }
                }
                remove_existing(dir, last, false, &name)?;
                linkat(
                    Some(tparent.as_raw_fd()),
                    tlast.as_os_str(),
                    Some(dir),
                    last.as_os_str(),
                    AtFlags::empty(),
                )
                .ctx(|| format!("tar entry {name:?}: hardlink to {tname:?}"))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let header = entry.header();
                let major = header
                    .device_major()
                    .map_err(|e| invalid(&name, e))?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(|e| invalid(&name, e))?
                    .unwrap_or(0);
                remove_existing(dir, last, false, &name)?;
                mknodat(
                    Some(dir),
                    last.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    makedev(u64::from(major), u64::from(minor)),
                )
                .ctx(|| format!("tar entry {name:?}: mknod"))?;
                apply_at_meta(dir, last, &meta, &name, true)?;
            }
            other => {
                tracing::warn!(entry = %name, kind = ?other, "skipping unsupported tar entry type");
            }
        }
        Ok(())
    }

    /// Opens the directory `comps` below the root, one component at a time, never following symlinks.
    /// Missing directories are created (0755, root-owned) when `create`; otherwise they are an error.
    fn walk(&self, comps: &[OsString], name: &str, create: bool) -> Result<OwnedFd> {
        let mut cur = nix::unistd::dup(self.root.as_raw_fd())
            .map(own_fd)
            .ctx(|| "duplicating layer root fd".to_string())?;
        for c in comps {
            let dir = cur.as_raw_fd();
            let next = match open_dir_at(dir, c) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(Some(dir), c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(Error::io(format!("tar entry {name:?}: mkdir parent"), e))
                        }
                    }
                    let fd =
                        open_dir_at(dir, c).ctx(|| format!("tar entry {name:?}: open parent"))?;
                    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755))
                        .ctx(|| format!("tar entry {name:?}: chmod parent"))?;
                    fd
                }
                Err(Errno::ENOENT) => {
                    return Err(invalid(name, format!("{c:?} does not exist in this layer")));
                }
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                    return Err(invalid(
                        name,
                        format!("path component {c:?} is a symlink or not a directory (refusing to write through it)"),
                    ));
                }
                Err(e) => return Err(Error::io(format!("tar entry {name:?}: open parent"), e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Sets directory mtimes last; a directory replaced or removed by a later entry is skipped.
    fn finish_dir_times(&self) {
        for (comps, mtime) in self.dir_times.iter().rev() {
            let fd = match comps.split_last() {
                None => nix::unistd::dup(self.root.as_raw_fd()).map(own_fd),
                Some((last, prefix)) => match self.walk(prefix, "", false) {
                    Ok(p) => open_dir_at(p.as_raw_fd(), last),
                    Err(_) => continue,
                },
            };
            if let Ok(fd) = fd {
                let _ = futimens(fd.as_raw_fd(), &timespec(*mtime), &timespec(*mtime));
            }
        }
    }
}

/// Reads ownership, mode, mtime and xattrs from the header and its PAX extensions.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta> {
    let header = entry.header();
    let mut uid = header.uid().map_err(|e| invalid(name, e))?;
    let mut gid = header.gid().map_err(|e| invalid(name, e))?;
    let mode = header.mode().map_err(|e| invalid(name, e))? & 0o7777;
    let mut mtime = header.mtime().map_err(|e| invalid(name, e))? as i64;
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| invalid(name, e))? {
        for ext in exts {
            let ext = ext.map_err(|e| invalid(name, e))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let parse = || std::str::from_utf8(value).ok();
            match key {
                "uid" => uid = parse().and_then(|v| v.parse().ok()).unwrap_or(uid),
                "gid" => gid = parse().and_then(|v| v.parse().ok()).unwrap_or(gid),
                "mtime" => {
                    let secs = parse()
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse().ok());
                    mtime = secs.unwrap_or(mtime);
                }
                _ => {
                    if let Some(x) = key.strip_prefix(PAX_XATTR_PREFIX) {
                        xattrs.push((x.to_string(), value.to_vec()));
                    }
                }
            }
        }
    }
    let uid = u32::try_from(uid).map_err(|_| invalid(name, format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| invalid(name, format!("gid {gid} out of range")))?;
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

/// Owner, mode (after chown, which clears set-id bits) and xattrs on an open file or directory.
fn apply_fd_meta(fd: RawFd, meta: &Meta, name: &str) -> Result<()> {
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .ctx(|| format!("tar entry {name:?}: chown"))?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode as libc::mode_t))
        .ctx(|| format!("tar entry {name:?}: chmod"))?;
    for (key, value) in &meta.xattrs {
        xattr_result(set_xattr_fd(fd, key, value), key, name)?;
    }
    Ok(())
}

/// Owner, times, xattrs (and mode when `chmod`) of `name` in `dir` without following it (symlinks, devices).
fn apply_at_meta(dir: RawFd, last: &OsStr, meta: &Meta, name: &str, chmod: bool) -> Result<()> {
    fchownat(
        Some(dir),
        last,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(|| format!("tar entry {name:?}: chown"))?;
    if chmod {
        // `last` was just created by us as a device node or fifo in a directory only we write to.
        fchmodat(
            Some(dir),
            last,
            Mode::from_bits_truncate(meta.mode as libc::mode_t),
            FchmodatFlags::FollowSymlink,
        )
        .ctx(|| format!("tar entry {name:?}: chmod"))?;
    }
    for (key, value) in &meta.xattrs {
        let path = proc_path(dir, last);
        xattr_result(lset_xattr_path(&path, key, value), key, name)?;
    }
    let t = timespec(meta.mtime);
    utimensat(Some(dir), last, &t, &t, UtimensatFlags::NoFollowSymlink)
        .ctx(|| format!("tar entry {name:?}: set times"))
}

/// xattrs the filesystem or kernel does not support are skipped with a warning, like containerd does.
fn xattr_result(r: io::Result<()>, key: &str, name: &str) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EPERM) | Some(libc::EINVAL)
            ) =>
        {
            tracing::warn!(entry = %name, xattr = %key, error = %e, "skipping unsupported xattr");
            Ok(())
        }
        Err(e) => Err(Error::io(format!("tar entry {name:?}: set xattr {key}"), e)),
    }
}

fn set_xattr_fd(fd: RawFd, key: &str, value: &[u8]) -> io::Result<()> {
    let key = CString::new(key).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `key` is a valid NUL-terminated string and `value` a valid buffer of the given length, both
    // alive for the duration of the call; `fd` is an open descriptor.
    let rc = unsafe { libc::fsetxattr(fd, key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lset_xattr_path(path: &Path, key: &str, value: &[u8]) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let key = CString::new(key).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings are valid and NUL-terminated, `value` is a valid buffer of the given length, all
    // alive for the duration of the call.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes room for a new entry named `last` in `dir`. An existing directory is kept when `keep_dir` (and
/// `true` returned); anything else is removed (directories recursively, never following symlinks).
fn remove_existing(dir: RawFd, last: &OsStr, keep_dir: bool, name: &str) -> Result<bool> {
    let st = match lstat_at(dir, last) {
        Ok(Some(st)) => st,
        Ok(None) => return Ok(false),
        Err(e) => return Err(Error::io(format!("tar entry {name:?}: stat"), e)),
    };
    if is_dir(&st) {
        if keep_dir {
            return Ok(true);
        }
        let path = proc_path(dir, last);
        std::fs::remove_dir_all(&path)
            .ctx(|| format!("tar entry {name:?}: replacing directory"))?;
    } else {
        unlinkat(Some(dir), last, UnlinkatFlags::NoRemoveDir)
            .ctx(|| format!("tar entry {name:?}: replacing"))?;
    }
    Ok(false)
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
