//! Scheduling priority of compute threads.
//!
//! `ternforge serve` runs generation on worker threads and the rayon pool; when they keep
//! every core busy, the HTTP threads must still get the CPU at once so that `/health` answers
//! in well under 10 ms. Compute threads therefore lower their own priority (Linux: nice +10
//! for the calling thread only); the async threads keep the default. Elsewhere this does
//! nothing.

/// Lower the scheduling priority of the calling thread (best effort: a failure only costs
/// latency, so it is ignored).
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
        // PRIO_PROCESS with a thread id applies to that one thread on Linux.
        unsafe {
            let tid = libc::gettid();
            let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
        }
    }
}

/// The nice value of the calling thread (Linux), for tests.
#[cfg(all(test, target_os = "linux"))]
fn this_thread_nice() -> i32 {
    // SAFETY: as above; getpriority may return -1 legitimately, errno is not needed here.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn lowers_only_the_calling_thread() {
        let before = super::this_thread_nice();
        let inner = std::thread::spawn(|| {
            super::lower_this_thread();
            super::this_thread_nice()
        })
        .join()
        .unwrap();
        assert_eq!(inner, (before + 10).min(19));
        assert_eq!(super::this_thread_nice(), before);
    }
}
