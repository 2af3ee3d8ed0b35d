//! How long the person at this machine has been away, for `--when-idle`.
//!
//! Linux: logind's `IdleHint` and `IdleSinceHint` (what desktops set when the screen
//! idles), read with `loginctl`. macOS: the HID system's idle time, read with
//! `ioreg`. Where neither can be read the flag is refused with the reason: guessing
//! would put work on a machine someone is using.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the person's idle time.
pub trait IdleClock: Send + Sync {
    /// How long nobody has used the machine (zero while someone does).
    fn idle_for(&self) -> Result<Duration, String>;
}

/// This machine's reader, checked once: an error says why there is none.
pub fn system_clock() -> Result<Box<dyn IdleClock>, String> {
    let clock: Box<dyn IdleClock> = if cfg!(target_os = "macos") {
        Box::new(HidIdle)
    } else {
        Box::new(Logind)
    };
    clock
        .idle_for()
        .map_err(|why| format!("--when-idle cannot tell whether the person is away: {why}"))?;
    Ok(clock)
}

/// logind's manager properties: idle once every session is.
pub struct Logind;

impl IdleClock for Logind {
    fn idle_for(&self) -> Result<Duration, String> {
        let out = Command::new("loginctl")
            .args([
                "show-session",
                "--property=IdleHint",
                "--property=IdleSinceHint",
            ])
            .output()
            .map_err(|e| format!("cannot run loginctl (logind's client): {e}"))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.lines().next().unwrap_or("no reason given").trim();
            return Err(format!("logind cannot be read (loginctl: {said})"));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        logind_idle(&String::from_utf8_lossy(&out.stdout), now)
    }
}

/// The idle time in `loginctl show-session` output at `now` (since the epoch):
/// zero unless `IdleHint=yes`, then the time since `IdleSinceHint` (microseconds
/// since the epoch).
fn logind_idle(output: &str, now: Duration) -> Result<Duration, String> {
    let value = |name: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix('='))
            .map(str::trim)
    };
    match value("IdleHint") {
        Some("no") => Ok(Duration::ZERO),
        Some("yes") => {
            let since = value("IdleSinceHint")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("logind says idle but gives no IdleSinceHint")?;
            Ok(now.saturating_sub(Duration::from_micros(since)))
        }
        _ => Err("logind gives no IdleHint".into()),
    }
}

/// macOS: `HIDIdleTime` (nanoseconds) of the `IOHIDSystem` registry entry.
pub struct HidIdle;

impl IdleClock for HidIdle {
    fn idle_for(&self) -> Result<Duration, String> {
        let out = Command::new("ioreg")
            .args(["-c", "IOHIDSystem", "-d", "4"])
            .output()
            .map_err(|e| format!("cannot run ioreg: {e}"))?;
        if !out.status.success() {
            return Err("ioreg cannot read the HID system".into());
        }
        hid_idle(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The first `"HIDIdleTime" = N` of `ioreg` output, N in nanoseconds.
fn hid_idle(output: &str) -> Result<Duration, String> {
    output
        .lines()
        .find_map(|line| {
            let (_, value) = line.split_once("\"HIDIdleTime\" =")?;
            value.trim().parse::<u64>().ok()
        })
        .map(Duration::from_nanos)
        .ok_or_else(|| "ioreg shows no HIDIdleTime".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logind_is_idle_only_with_its_hint() {
        let now = Duration::from_secs(1_800_000_000);
        let since = now - Duration::from_secs(600);
        let idle = format!("IdleHint=yes\nIdleSinceHint={}\n", since.as_micros());
        assert_eq!(logind_idle(&idle, now), Ok(Duration::from_secs(600)));
        let busy = format!("IdleHint=no\nIdleSinceHint={}\n", since.as_micros());
        assert_eq!(logind_idle(&busy, now), Ok(Duration::ZERO));
        assert!(logind_idle("", now).is_err());
        assert!(logind_idle("IdleHint=yes\n", now).is_err());
    }

    #[test]
    fn hid_idle_time_is_in_nanoseconds() {
        let out = "  | |   \"HIDIdleTime\" = 2500000000\n  | |   \"Other\" = 1\n";
        assert_eq!(hid_idle(out), Ok(Duration::from_millis(2500)));
        assert!(hid_idle("nothing here").is_err());
    }

    #[test]
    fn where_logind_is_there_it_is_read_and_where_not_the_reason_is_given() {
        match Logind.idle_for() {
            // A machine with logind (a desktop, a VM booted with systemd).
            Ok(idle) => assert!(idle < Duration::from_secs(10 * 365 * 86_400)),
            // Containers and CI: refused, naming logind.
            Err(why) => assert!(why.contains("logind") || why.contains("loginctl"), "{why}"),
        }
    }
}
