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
//! not merely hidden by a `chroot`), a fresh `/proc` with the kernel's knobs
//! read-only, a minimal `/dev`, a session of its own, and a cleared
//! environment. `/tmp` is the image's own, as on a build VM: a file that one
//! step (or the File customizer) puts there is there for the next.
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

// The raw clone below passes (flags, stack, parent_tid, child_tid, tls),
// the argument order of x86_64 and aarch64 (s390 and others differ).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the local provider's sandbox supports x86_64 and aarch64 Linux");

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
    /// Bind `src` on `target`, then make the bind read-only; an optional
    /// one that does not exist is skipped.
    BindRo {
        src: CString,
        target: CString,
        optional: bool,
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
    /// Write end of the pipe that says which set-up step failed (see [`Diagnostics`]).
    diag: libc::c_int,
}

/// Why a sandbox could not start. A failure between fork and exec reaches
/// the parent only as an errno; the failing step's name travels through
/// this pipe (close-on-exec, so a started step never holds it).
pub(crate) struct Diagnostics {
    read: std::os::fd::OwnedFd,
    write: Option<std::os::fd::OwnedFd>,
}

impl Diagnostics {
    fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors this function then owns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned only here.
        let (read, write) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        Ok(Self {
            read,
            write: Some(write),
        })
    }

    /// After a failed spawn: what the sandbox said, if anything.
    pub fn explain(mut self) -> Option<String> {
        use std::io::Read;
        drop(self.write.take());
        let mut text = String::new();
        let _ = std::fs::File::from(self.read).read_to_string(&mut text);
        let text = text.trim().to_string();
        (!text.is_empty()).then_some(text)
    }
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
    pub user: Option<Ids>,
    pub cwd: &'a str,
}

/// Kernel knobs under /proc that a step must not change on the host: read-only,
/// as bubblewrap left them.
const PROC_READ_ONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"];

impl Launch {
    pub fn prepare(s: &Spec<'_>) -> io::Result<(Launch, Diagnostics)> {
        let root = s.root.as_os_str().as_bytes().to_vec();
        let at = |inner: &str| c([root.as_slice(), inner.as_bytes()].concat());
        let none = || c("");
        let mut ops = Vec::new();
        let mount = |src: &str, target: &str, fstype: &str, flags, data: &str, what| {
            Ok::<_, io::Error>(Op::Mount {
                src: c(src)?,
                target: at(target)?,
                fstype: c(fstype)?,
                flags,
                data: c(data)?,
                what,
            })
        };
        let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
        // Nothing mounted here may propagate back to the host.
        ops.push(Op::Mount {
            src: none()?,
            target: c("/")?,
            fstype: none()?,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: none()?,
            what: b"make / private",
        });
        // pivot_root needs the new root to be a mount point.
        ops.push(Op::Mount {
            src: c(&root)?,
            target: c(&root)?,
            fstype: none()?,
            flags: libc::MS_BIND | libc::MS_REC,
            data: none()?,
            what: b"bind the image root",
        });
        // A bind keeps the flags of the data folder's mount: on a nosuid
        // mount, sudo could not work. Clear them on this private bind.
        ops.push(Op::Mount {
            src: none()?,
            target: c(&root)?,
            fstype: none()?,
            flags: libc::MS_BIND | libc::MS_REMOUNT,
            data: none()?,
            what: b"clear nosuid on the image root (is the data folder on a nosuid mount?)",
        });
        ops.push(mount(
            "proc",
            "/proc",
            "proc",
            nosuid | libc::MS_NOEXEC,
            "",
            b"mount /proc",
        )?);
        for p in PROC_READ_ONLY {
            ops.push(Op::BindRo {
                src: at(p)?,
                target: at(p)?,
                optional: true,
                what: b"make /proc/sys read-only",
            });
        }
        let dev_flags = libc::MS_NOSUID | libc::MS_NOEXEC;
        ops.push(mount(
            "tmpfs",
            "/dev",
            "tmpfs",
            dev_flags,
            "mode=0755",
            b"mount /dev",
        )?);
        for d in DEVICES {
            let node = format!("/dev/{d}");
            ops.push(Op::Touch { path: at(&node)? });
            ops.push(Op::Mount {
                src: c(&node)?,
                target: at(&node)?,
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
        ops.push(mount(
            "devpts",
            "/dev/pts",
            "devpts",
            dev_flags,
            "newinstance,ptmxmode=0666,mode=0620",
            b"mount /dev/pts",
        )?);
        ops.push(Op::Mkdir {
            path: at("/dev/shm")?,
            mode: 0o1777,
        });
        ops.push(mount(
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid,
            "mode=1777",
            b"mount /dev/shm",
        )?);
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
                optional: false,
                what: b"bind /etc/resolv.conf",
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
        let diag = Diagnostics::new()?;
        let launch = Launch {
            root: c(root)?,
            ops,
            flags,
            hostname: c("kiln-build")?,
            user: s.user,
            cwd: c(s.cwd)?,
            loopback: !s.network,
            diag: std::os::fd::AsRawFd::as_raw_fd(diag.write.as_ref().expect("just made")),
        };
        Ok((launch, diag))
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
        let d = self.diag;
        check(
            d,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL),
            b"prctl",
        )?;
        let pid = libc::syscall(
            libc::SYS_clone,
            (self.flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid < 0 {
            return Err(fail(d, b"clone (new namespaces)"));
        }
        if pid > 0 {
            // The waiting process must not hold std's exec-status pipe (or
            // any other descriptor): the parent's spawn returns only when
            // every copy of that pipe is closed.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) < 0 {
                let max = libc::sysconf(libc::_SC_OPEN_MAX).max(4096) as libc::c_int;
                for fd in 3..max {
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
        // PID 1 of the new pid namespace from here on. It dies with the
        // waiting process, which kiln kills with the step's process group.
        check(
            d,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL),
            b"prctl",
        )?;
        for op in &self.ops {
            op.run(d)?;
        }
        check(
            d,
            libc::sethostname(self.hostname.as_ptr(), self.hostname.as_bytes().len()),
            b"sethostname",
        )?;
        if self.loopback {
            loopback_up(d)?;
        }
        check(d, libc::chdir(self.root.as_ptr()), b"chdir to the image")?;
        // pivot_root(".", ".") stacks the old root on the new one; detaching
        // it leaves nothing of the host's tree reachable.
        check(
            d,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            b"pivot_root",
        )?;
        check(
            d,
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            b"detach the host root",
        )?;
        check(d, libc::chdir(c"/".as_ptr()), b"chdir /")?;
        // A session of its own: no controlling terminal, so a step cannot
        // reach the operator's (/dev/tty fails with ENXIO, as over SSH
        // without a pty).
        check(d, libc::setsid(), b"setsid")?;
        if let Some(ids) = self.user {
            let groups = [ids.gid as libc::gid_t];
            check(d, libc::setgroups(1, groups.as_ptr()), b"setgroups")?;
            check(d, libc::setresgid(ids.gid, ids.gid, ids.gid), b"setresgid")?;
            check(d, libc::setresuid(ids.uid, ids.uid, ids.uid), b"setresuid")?;
            // Changing ids clears the parent-death signal: set it again.
            check(
                d,
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL),
                b"prctl",
            )?;
        }
        check(
            d,
            libc::chdir(self.cwd.as_ptr()),
            b"chdir to the step's folder (the build user's home)",
        )?;
        Ok(())
    }
}

impl Op {
    unsafe fn run(&self, d: libc::c_int) -> io::Result<()> {
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
                let data_ptr = if data.as_bytes().is_empty() {
                    std::ptr::null()
                } else {
                    data.as_ptr() as *const libc::c_void
                };
                check(
                    d,
                    libc::mount(src.as_ptr(), target.as_ptr(), fs, *flags, data_ptr),
                    what,
                )
            }
            Op::BindRo {
                src,
                target,
                optional,
                what,
            } => {
                let r = libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                if r < 0 && *optional && *libc::__errno_location() == libc::ENOENT {
                    return Ok(());
                }
                check(d, r, what)?;
                check(
                    d,
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
                    return Err(fail(d, b"mkdir in the sandbox"));
                }
                // mkdir applies the umask; the mode must be exact (1777).
                check(
                    d,
                    libc::chmod(path.as_ptr(), *mode),
                    b"chmod in the sandbox",
                )
            }
            Op::Touch { path } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    return Err(fail(d, b"create a mount point"));
                }
                libc::close(fd);
                Ok(())
            }
            Op::Symlink { target, link } => check(
                d,
                libc::symlink(target.as_ptr(), link.as_ptr()),
                b"symlink in /dev",
            ),
        }
    }
}

/// A new network namespace has a loopback device that is down; bring it up
/// so that a step can still talk to itself (as bubblewrap's did).
unsafe fn loopback_up(d: libc::c_int) -> io::Result<()> {
    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if fd < 0 {
        return Err(fail(d, b"socket for loopback"));
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
    let r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
    libc::close(fd);
    check(d, r, b"bring loopback up")
}

/// The error of the last call, after writing which sandbox step failed to
/// the diagnostics pipe `d`: errno alone would not say.
unsafe fn fail(d: libc::c_int, what: &[u8]) -> io::Error {
    let e = io::Error::last_os_error();
    let prefix = b"cannot ";
    libc::write(d, prefix.as_ptr().cast(), prefix.len());
    libc::write(d, what.as_ptr().cast(), what.len());
    e
}

unsafe fn check(d: libc::c_int, r: libc::c_int, what: &[u8]) -> io::Result<()> {
    if r < 0 {
        Err(fail(d, what))
    } else {
        Ok(())
    }
}
