//! The exit codes of `kiln`, in one place: scripts and CI tell a failed
//! build from a broken command by them, and `kiln --help` lists them
//! ([`HELP`]).

use std::process::ExitCode;

/// How a `kiln` command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; for `kiln build --wait`, the build succeeded.
    Ok,
    /// The command could not do its work (the API answered an error, a
    /// file is invalid, a check failed).
    Error,
    /// The command line is wrong (clap's own code for usage errors).
    Usage,
    /// The build ended `failed`.
    BuildFailed,
    /// The build ended `canceled`.
    Canceled,
    /// `--timeout` passed before the build ended; it goes on.
    Timeout,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::BuildFailed => 3,
            Exit::Canceled => 4,
            Exit::Timeout => 5,
        }
    }

    /// `Ok` when `ok`, else `Error`.
    pub fn ok_if(ok: bool) -> Exit {
        if ok {
            Exit::Ok
        } else {
            Exit::Error
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// The table `kiln --help` ends with; a test checks it against [`Exit::code`].
pub const HELP: &str = "\
Exit codes:
  0  success (for `build --wait`: the build succeeded)
  1  error: the API, a file or a check failed
  2  usage: the command line is wrong
  3  the build failed
  4  the build was canceled
  5  --timeout passed before the build ended (it goes on)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_table_lists_every_code_with_its_number() {
        for e in [
            Exit::Ok,
            Exit::Error,
            Exit::Usage,
            Exit::BuildFailed,
            Exit::Canceled,
            Exit::Timeout,
        ] {
            let row = format!("\n  {}  ", e.code());
            assert!(HELP.contains(&row), "{e:?} missing from the help: {HELP}");
        }
        assert_eq!(HELP.lines().count(), 7);
    }
}
