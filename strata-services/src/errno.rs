//! What the sandbox test payloads (strata-probe, strata-escape) share: errno names, whose
//! output the tests match exactly, and the read attempt both make.

use std::io::Read;
use std::path::Path;

/// Reads `path` whole (a directory: lists it), the operation a read grant allows or refuses.
pub fn read_path(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::read_dir(path)?.try_for_each(|entry| entry.map(drop))
    } else {
        let mut buf = Vec::new();
        std::fs::File::open(path)?.read_to_end(&mut buf).map(drop)
    }
}

/// The symbolic name of an errno (`EACCES`), or the number for ones a sandbox does not
/// plausibly produce. Shared by the test payloads strata-probe and strata-escape.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ELOOP => "ELOOP",
        libc::ENOEXEC => "ENOEXEC",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::EBADMSG => "EBADMSG",
        _ => return code.to_string(),
    };
    name.to_owned()
}
