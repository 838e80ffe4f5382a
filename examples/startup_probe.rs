//! Time from exec to first HTTP 200, for scripts/bench-startup.sh.
//!
//! `startup_probe [--runs N] -- CMD [ARGS…] [-- CMD2 [ARGS…] …]` starts each
//! command N times, interleaved (A, B, A, B, …, so both see the same machine
//! load), with `FUNCTIONS_CUSTOMHANDLER_PORT` set to a free loopback port;
//! it times from just before the spawn to the first `200` answer to `GET /`,
//! polling with a connect every 0.5 ms, then kills the server (outside the
//! timing). Prints min, median, mean and p90 per command.
//!
//! A command may start with `@LABEL`, the name it is reported under, then
//! `KEY=VALUE` settings for its environment (as `env` takes them, without
//! the extra exec of `env` itself, which would be in the timing: about a
//! millisecond here).
//!
//! `--once -- CMD …` starts one command once and prints nothing, for
//! `hyperfine` to time the whole probe (overhead included).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_micros(500);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One answer to `GET /`, if the server is up: its status code.
fn get_root(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// A command and the settings it runs with.
#[derive(Clone)]
struct Cmd {
    env: Vec<(String, String)>,
    argv: Vec<String>,
}

impl Cmd {
    /// `KEY=VALUE …` settings, then the program and its arguments.
    fn parse(words: &[String]) -> Cmd {
        let settings = words
            .iter()
            .take_while(|w| {
                w.split_once('=')
                    .is_some_and(|(k, _)| !k.is_empty() && !k.contains('/'))
            })
            .count();
        let env = words[..settings]
            .iter()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let argv = words[settings..].to_vec();
        assert!(
            !argv.is_empty(),
            "no program after the settings in {words:?}"
        );
        Cmd { env, argv }
    }

    fn join(&self) -> String {
        self.argv.join(" ")
    }
}

fn spawn(cmd: &Cmd, port: u16) -> Child {
    Command::new(&cmd.argv[0])
        .args(&cmd.argv[1..])
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", cmd.argv[0]))
}

/// Starts `cmd`, returns the time to its first 200; the server is stopped after.
fn time_to_ready(cmd: &Cmd) -> Duration {
    let port = free_port();
    let started = Instant::now();
    let mut child = spawn(cmd, port);
    let ready = loop {
        match get_root(port) {
            Some(200) => break started.elapsed(),
            Some(other) => panic!("{}: GET / answered {other}", cmd.join()),
            None => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} exited before answering: {status}", cmd.join());
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{} did not answer in {LIMIT:?}", cmd.join());
        }
        std::thread::sleep(POLL);
    };
    let _ = child.kill();
    let _ = child.wait();
    ready
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 20usize;
    let mut once = false;
    let mut i = 0;
    while i < args.len() && args[i] != "--" {
        match args[i].as_str() {
            "--runs" => {
                i += 1;
                runs = args
                    .get(i)
                    .and_then(|n| n.parse().ok())
                    .expect("--runs: a whole number");
            }
            "--once" => once = true,
            other => panic!("unknown option {other}; usage: startup_probe [--runs N | --once] -- CMD … [-- CMD …]"),
        }
        i += 1;
    }
    let (labels, commands): (Vec<String>, Vec<Cmd>) = args[i..]
        .split(|a| a == "--")
        .filter(|c| !c.is_empty())
        .map(|c| match c[0].strip_prefix('@') {
            Some(label) => (label.to_string(), Cmd::parse(&c[1..])),
            None => {
                let cmd = Cmd::parse(c);
                (cmd.join(), cmd)
            }
        })
        .unzip();
    assert!(
        !commands.is_empty(),
        "usage: startup_probe [--runs N | --once] -- CMD … [-- CMD …]"
    );
    if once {
        time_to_ready(&commands[0]);
        return;
    }
    // One unmeasured start each: page cache and binaries warm.
    for c in &commands {
        time_to_ready(c);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); commands.len()];
    for _ in 0..runs {
        for (c, t) in commands.iter().zip(times.iter_mut()) {
            t.push(time_to_ready(c));
        }
    }
    println!(
        "{:<48} {:>8} {:>8} {:>8} {:>8}  (ms, {runs} runs)",
        "command", "min", "median", "mean", "p90"
    );
    for (label, t) in labels.iter().zip(times.iter_mut()) {
        t.sort();
        let mean = t.iter().sum::<Duration>() / t.len() as u32;
        let p90 = t[(t.len() * 9 / 10).min(t.len() - 1)];
        println!(
            "{:<48} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            label,
            ms(t[0]),
            ms(t[t.len() / 2]),
            ms(mean),
            ms(p90)
        );
    }
}
