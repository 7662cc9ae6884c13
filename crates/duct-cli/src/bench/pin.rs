//! CPU placement (`--pin`): which CPU each end of a benchmark runs on.
//!
//! `same` puts both ends on the first CPU this process may use (CPU 0 on an unrestricted
//! machine), `split` puts the measuring end there and the peer on the second. Pinning is
//! per thread (`sched_setaffinity`), so threads that a pinned thread starts afterwards —
//! duct's own, if it has any — start on the same CPU. duct and raw runs get the same
//! placement, since they run on the same two threads.

use crate::cli::PinArg;
use crate::error::{bail, Result};

/// The CPUs for the measuring end and for the peer under `pin` (`None`: leave alone).
pub fn plan(pin: PinArg) -> Result<(Option<usize>, Option<usize>)> {
    match pin {
        PinArg::None => Ok((None, None)),
        PinArg::Same => {
            let cpus = allowed_cpus(1)?;
            Ok((Some(cpus[0]), Some(cpus[0])))
        }
        PinArg::Split => {
            let cpus = allowed_cpus(2)?;
            Ok((Some(cpus[0]), Some(cpus[1])))
        }
    }
}

/// The first `n` CPUs of this thread's affinity mask.
#[cfg(target_os = "linux")]
fn allowed_cpus(n: usize) -> Result<Vec<usize>> {
    use rustix::thread::{sched_getaffinity, CpuSet};
    let set = sched_getaffinity(None).map_err(|e| {
        crate::error::CliError::msg(format!("--pin: reading the CPU affinity: {e}"))
    })?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .take(n)
        .collect();
    if cpus.len() < n {
        bail!(
            "--pin: needs {n} CPUs, but this process may run on only {}",
            cpus.len()
        );
    }
    Ok(cpus)
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus(_n: usize) -> Result<Vec<usize>> {
    bail!("--pin is supported on Linux only")
}

/// Pins the calling thread to `cpu`.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    use rustix::thread::{sched_setaffinity, CpuSet};
    if cpu >= CpuSet::MAX_CPU {
        bail!("cannot pin to CPU {cpu}: beyond the largest CPU number");
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)
        .map_err(|e| crate::error::CliError::msg(format!("cannot pin to CPU {cpu}: {e}")))
}

/// Pins the calling thread to `cpu`.
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> Result<()> {
    bail!("--pin is supported on Linux only")
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn none_pins_nothing() {
        assert_eq!(plan(PinArg::None).unwrap(), (None, None));
    }

    #[test]
    fn same_uses_one_cpu_and_pinning_works() {
        let (a, b) = plan(PinArg::Same).unwrap();
        assert_eq!(a, b);
        // On a thread of its own, so the test harness's threads keep their placement.
        std::thread::spawn(move || pin_current_thread(a.unwrap()).unwrap())
            .join()
            .unwrap();
    }
}
