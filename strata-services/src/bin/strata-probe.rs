//! strata-probe: a test payload for strata-launch. Performs one operation and prints its
//! outcome on stdout: `ok` (exit 0) or `errno=NAME` (exit 1), so tests can assert the exact
//! errno a sandbox produced.
//!
//! Operations: `read PATH` (open and read a file, or list a directory), `write PATH` (create or
//! truncate and write), `bind PORT` / `connect PORT` (TCP on 127.0.0.1), `exec PATH` (spawn
//! and wait; a non-zero exit prints `exit=N`), `caps` (prints the capability sets, always ok),
//! `env NAME` (prints `NAME=value` or `NAME unset`). Usage errors exit 2.

use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode};

use caps::CapSet;
use strata_services::errno::{errno_name, read_path as read};

fn outcome(result: io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(err) => {
            match err.raw_os_error() {
                Some(code) => println!("errno={}", errno_name(code)),
                None => println!("error={err}"),
            }
            ExitCode::from(1)
        }
    }
}

fn write(path: &Path) -> io::Result<()> {
    std::fs::File::create(path)?.write_all(b"strata-probe\n")
}

fn port(arg: &str) -> Option<u16> {
    arg.parse().ok()
}

fn set_names(set: CapSet) -> String {
    match caps::read(None, set) {
        Ok(caps) => {
            let mut names: Vec<String> = caps.iter().map(ToString::to_string).collect();
            names.sort();
            names.join(",")
        }
        Err(err) => format!("<{err}>"),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: strata-probe read PATH | write PATH | bind PORT | connect PORT | exec PATH | caps | env NAME"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["read", path] => outcome(read(Path::new(path))),
        ["write", path] => outcome(write(Path::new(path))),
        ["bind", p] => match port(p) {
            Some(p) => outcome(TcpListener::bind((Ipv4Addr::LOCALHOST, p)).map(drop)),
            None => usage(),
        },
        ["connect", p] => match port(p) {
            Some(p) => outcome(TcpStream::connect((Ipv4Addr::LOCALHOST, p)).map(drop)),
            None => usage(),
        },
        ["exec", path] => match Command::new(path).status() {
            Ok(status) if status.success() => outcome(Ok(())),
            Ok(status) => {
                println!("exit={}", status.code().unwrap_or(-1));
                ExitCode::from(1)
            }
            Err(err) => outcome(Err(err)),
        },
        ["caps"] => {
            println!(
                "effective={} permitted={} inheritable={} ambient={} bounding={}",
                set_names(CapSet::Effective),
                set_names(CapSet::Permitted),
                set_names(CapSet::Inheritable),
                set_names(CapSet::Ambient),
                set_names(CapSet::Bounding),
            );
            ExitCode::SUCCESS
        }
        ["env", name] => {
            match std::env::var(name) {
                Ok(value) => println!("{name}={value}"),
                Err(_) => println!("{name} unset"),
            }
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
