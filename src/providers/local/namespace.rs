//! kiln's own container launch: Linux namespaces, mounts and `pivot_root`
//! done between `fork` and `exec` of a step.
//!
//! Why not bubblewrap: bwrap always sets `PR_SET_NO_NEW_PRIVS`, even when
//! run as root, and under that flag the kernel ignores set-user-id bits. AIB
//! runs customizers as a non-root build user who gains root with `sudo`, a
//! set-user-id program, so real `sudo` can only work in a sandbox that does
//! not set the flag. The sandbox is otherwise what bwrap gave: new mount,
//! pid, ipc, uts and cgroup namespaces (and network, when the build has it
//! off), the image at `/` through `pivot_root` (the host's tree is detached,
//! not merely hidden by a `chroot`), a fresh `/proc`, a minimal `/dev`, a
//! private `/tmp`, and a cleared environment.
//!
//! Everything the child does is prepared here as plain data (C strings)
//! before the fork: after `fork` in a multi-threaded process only
//! async-signal-safe calls are allowed, so the child makes raw system calls
//! and allocates nothing. The second fork is a raw `clone` (no `atfork`
//! handlers, which take malloc's locks) that starts PID 1 of the new pid
//! namespace; the first child waits for it and exits with its status.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The user a step runs as, inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// What the child does, in order, before the new root is entered.
enum Op {
    Mount {
        src: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: CString,
        what: &'static [u8],
    },
    /// Bind `src` on `target`, then make the bind read-only.
    BindRo {
        src: CString,
        target: CString,
        what: &'static [u8],
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// An empty file to bind a device or file onto.
    Touch {
        path: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
}

/// A prepared launch; `apply` runs in the child of `Command::pre_exec`.
pub(crate) struct Launch {
    root: CString,
    ops: Vec<Op>,
    flags: libc::c_int,
    hostname: CString,
    user: Option<Ids>,
    cwd: CString,
    loopback: bool,
}

fn c(p: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(p.as_ref().to_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a sandbox path holds a NUL byte",
        )
    })
}

/// Host devices a step gets in its `/dev`, as bubblewrap's `--dev` gives.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

pub(crate) struct Spec<'a> {
    pub root: &'a Path,
    pub network: bool,
    pub resolv_conf: bool,
    /// (host path, absolute path inside): files bound read-only. Their
    /// parents must be under `/tmp` (created on the sandbox's tmpfs).
    pub ro_binds: &'a [(std::path::PathBuf, String)],
    pub user: Option<Ids>,
    pub cwd: &'a str,
}

impl Launch {
    pub fn prepare(s: &Spec<'_>) -> io::Result<Launch> {
        let root = s.root.as_os_str().as_bytes().to_vec();
        let at = |inner: &str| c([root.as_slice(), inner.as_bytes()].concat());
        let none = || c("");
        let mut ops = Vec::new();
        let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
        ops.push(Op::Mount {
            src: c("proc")?,
            target: at("/proc")?,
            fstype: c("proc")?,
            flags: nosuid | libc::MS_NOEXEC,
            data: none()?,
            what: b"mount /proc",
        });
        ops.push(Op::Mount {
            src: c("tmpfs")?,
            target: at("/tmp")?,
            fstype: c("tmpfs")?,
            flags: nosuid,
            data: c("mode=1777")?,
            what: b"mount /tmp",
        });
        ops.push(Op::Mount {
            src: c("tmpfs")?,
            target: at("/dev")?,
            fstype: c("tmpfs")?,
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            data: c("mode=0755")?,
            what: b"mount /dev",
        });
        for d in DEVICES {
            ops.push(Op::Touch {
                path: at(&format!("/dev/{d}"))?,
            });
            ops.push(Op::Mount {
                src: c(format!("/dev/{d}"))?,
                target: at(&format!("/dev/{d}"))?,
                fstype: none()?,
                flags: libc::MS_BIND,
                data: none()?,
                what: b"bind a device",
            });
        }
        ops.push(Op::Mkdir {
            path: at("/dev/pts")?,
            mode: 0o755,
        });
        ops.push(Op::Mount {
            src: c("devpts")?,
            target: at("/dev/pts")?,
            fstype: c("devpts")?,
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            data: c("newinstance,ptmxmode=0666,mode=0620")?,
            what: b"mount /dev/pts",
        });
        ops.push(Op::Mkdir {
            path: at("/dev/shm")?,
            mode: 0o1777,
        });
        ops.push(Op::Mount {
            src: c("tmpfs")?,
            target: at("/dev/shm")?,
            fstype: c("tmpfs")?,
            flags: nosuid,
            data: c("mode=1777")?,
            what: b"mount /dev/shm",
        });
        for (link, target) in [
            ("/dev/ptmx", "pts/ptmx"),
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            ops.push(Op::Symlink {
                target: c(target)?,
                link: at(link)?,
            });
        }
        if s.network && s.resolv_conf {
            ops.push(Op::Touch {
                path: at("/etc/resolv.conf")?,
            });
            ops.push(Op::BindRo {
                src: c("/etc/resolv.conf")?,
                target: at("/etc/resolv.conf")?,
                what: b"bind /etc/resolv.conf",
            });
        }
        for (host, inside) in s.ro_binds {
            let inner = Path::new(inside);
            if !inner.starts_with("/tmp") || inside.contains("/..") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("sandbox bind {inside}: must be under /tmp"),
                ));
            }
            let mut dirs: Vec<&Path> = inner
                .ancestors()
                .skip(1)
                .take_while(|a| *a != Path::new("/tmp"))
                .collect();
            dirs.reverse();
            for d in dirs {
                ops.push(Op::Mkdir {
                    path: at(&d.to_string_lossy())?,
                    mode: 0o755,
                });
            }
            ops.push(Op::Touch { path: at(inside)? });
            ops.push(Op::BindRo {
                src: c(host.as_os_str().as_bytes())?,
                target: at(inside)?,
                what: b"bind a step file",
            });
        }
        let mut flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
        if !s.network {
            flags |= libc::CLONE_NEWNET;
        }
        Ok(Launch {
            root: c(root)?,
            ops,
            flags,
            hostname: c("kiln-build")?,
            user: s.user,
            cwd: c(s.cwd)?,
            loopback: !s.network,
        })
    }

    /// Runs in the forked child, before `exec`. Returns only in PID 1 of the
    /// new namespaces, with the new root entered and the user switched; the
    /// intermediate process never returns (it exits with PID 1's status).
    ///
    /// # Safety
    /// Call only between `fork` and `exec` (from `Command::pre_exec`).
    pub unsafe fn apply(&self) -> io::Result<()> {
        // SAFETY (whole body): raw system calls on prepared C strings; no
        // allocation, no locks.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL), b"prctl")?;
        let pid = libc::syscall(
            libc::SYS_clone,
            (self.flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid < 0 {
            return Err(fail(b"clone (new namespaces)"));
        }
        if pid > 0 {
            // The waiting process must not hold std's exec-status pipe (or
            // any other descriptor): the parent's spawn returns only when
            // every copy of that pipe is closed.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) < 0 {
                for fd in 3..4096 {
                    libc::close(fd);
                }
            }
            let mut status = 0;
            loop {
                let r = libc::waitpid(pid as libc::pid_t, &mut status, 0);
                if r == pid as libc::pid_t {
                    break;
                }
                if r < 0 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(127);
                }
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            libc::_exit(code);
        }
        // PID 1 of the new pid namespace from here on.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL), b"prctl")?;
        let empty = c"".as_ptr();
        // Nothing mounted here may propagate back to the host.
        check(
            libc::mount(
                empty,
                c"/".as_ptr(),
                empty,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            b"make / private",
        )?;
        // pivot_root needs the new root to be a mount point.
        check(
            libc::mount(
                self.root.as_ptr(),
                self.root.as_ptr(),
                empty,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
            b"bind the image root",
        )?;
        for op in &self.ops {
            op.run()?;
        }
        check(
            libc::sethostname(self.hostname.as_ptr(), self.hostname.as_bytes().len()),
            b"sethostname",
        )?;
        if self.loopback {
            loopback_up()?;
        }
        check(libc::chdir(self.root.as_ptr()), b"chdir to the image")?;
        // pivot_root(".", ".") stacks the old root on the new one; detaching
        // it leaves nothing of the host's tree reachable.
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            b"pivot_root",
        )?;
        check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            b"detach the host root",
        )?;
        check(libc::chdir(c"/".as_ptr()), b"chdir /")?;
        if let Some(ids) = self.user {
            let groups = [ids.gid as libc::gid_t];
            check(libc::setgroups(1, groups.as_ptr()), b"setgroups")?;
            check(libc::setresgid(ids.gid, ids.gid, ids.gid), b"setresgid")?;
            check(libc::setresuid(ids.uid, ids.uid, ids.uid), b"setresuid")?;
        }
        check(
            libc::chdir(self.cwd.as_ptr()),
            b"chdir to the step's folder",
        )?;
        Ok(())
    }
}

impl Op {
    unsafe fn run(&self) -> io::Result<()> {
        match self {
            Op::Mount {
                src,
                target,
                fstype,
                flags,
                data,
                what,
            } => {
                let fs = if fstype.as_bytes().is_empty() {
                    std::ptr::null()
                } else {
                    fstype.as_ptr()
                };
                let d = if data.as_bytes().is_empty() {
                    std::ptr::null()
                } else {
                    data.as_ptr() as *const libc::c_void
                };
                check(
                    libc::mount(src.as_ptr(), target.as_ptr(), fs, *flags, d),
                    what,
                )
            }
            Op::BindRo { src, target, what } => {
                check(
                    libc::mount(
                        src.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ),
                    what,
                )?;
                check(
                    libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND
                            | libc::MS_REMOUNT
                            | libc::MS_RDONLY
                            | libc::MS_NOSUID
                            | libc::MS_NODEV,
                        std::ptr::null(),
                    ),
                    what,
                )
            }
            Op::Mkdir { path, mode } => {
                if libc::mkdir(path.as_ptr(), *mode) < 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(fail(b"mkdir in the sandbox"));
                }
                // mkdir applies the umask; the mode must be exact (1777).
                check(libc::chmod(path.as_ptr(), *mode), b"chmod in the sandbox")
            }
            Op::Touch { path } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    return Err(fail(b"create a mount point"));
                }
                libc::close(fd);
                Ok(())
            }
            Op::Symlink { target, link } => check(
                libc::symlink(target.as_ptr(), link.as_ptr()),
                b"symlink in /dev",
            ),
        }
    }
}

/// A new network namespace has a loopback device that is down; bring it up
/// so that a step can still talk to itself (as bwrap's --unshare-net does).
unsafe fn loopback_up() -> io::Result<()> {
    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if fd < 0 {
        return Err(fail(b"socket for loopback"));
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
    let r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
    libc::close(fd);
    check(r, b"bring loopback up")
}

/// The error of the last call, after telling stderr (which goes to the build
/// log) which sandbox step failed: errno alone would not say.
unsafe fn fail(what: &[u8]) -> io::Error {
    let e = io::Error::last_os_error();
    let prefix = b"kiln sandbox: cannot ";
    libc::write(2, prefix.as_ptr().cast(), prefix.len());
    libc::write(2, what.as_ptr().cast(), what.len());
    libc::write(2, b"\n".as_ptr().cast(), 1);
    e
}

unsafe fn check(r: libc::c_int, what: &[u8]) -> io::Result<()> {
    if r < 0 {
        Err(fail(what))
    } else {
        Ok(())
    }
}
