//! Shared by the criterion benches of `crypto` and `esp` and by the no-allocation tests
//! ([`alloc`]) of the data-path crates (dev-dependency only).

pub mod alloc;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

/// This thread's CPU time instead of wall time, for crypto-bound benches: the machine
/// they run on is shared with other builds, and wall time then measures the scheduler as
/// much as the code. CPU time still carries cache and frequency effects of the
/// neighbours, but not the waiting.
pub struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, as wall time's.
        WallTime.formatter()
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work_on_this_thread() {
        let start = CpuTime.start();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let spent = CpuTime.end(start);
        assert!(spent > 0, "no CPU time counted for 5M iterations ({x})");
    }
}
