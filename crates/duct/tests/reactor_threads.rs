//! `set_reactor_threads` before first use sets how many reactor threads serve the process;
//! after first use it is refused. One test per file: the reactor is process-wide.

use std::time::Duration;

use duct::{DialOptions, ErrorKind, ListenOptions, RecvOptions};

#[test]
fn reactor_thread_count_is_configurable_before_first_use() {
    duct::set_reactor_threads(3).unwrap();
    let listener = duct::listen(
        // (tcp where there are no Unix sockets)
        &if cfg!(unix) {
            format!("uds://@duct-reactor-threads-{}", std::process::id())
        } else {
            "tcp://127.0.0.1:0".to_owned()
        },
        ListenOptions::default(),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let server = std::thread::spawn(move || -> Result<Vec<String>, String> {
        let mut got = Vec::new();
        let pipes: Vec<_> = (0..6)
            .map(|_| listener.accept().map_err(|e| format!("accept: {e}")))
            .collect::<Result<_, _>>()?;
        for (j, p) in pipes.iter().enumerate() {
            let m = p
                .recv_with(&RecvOptions::default().timeout(Duration::from_secs(5)))
                .map_err(|e| {
                    format!(
                        "server recv on accepted #{j} (session {}): {e}",
                        p.session_id()
                    )
                })?;
            got.push(format!(
                "#{j} session {} peer {}: {:?}",
                p.session_id(),
                p.peer_addr(),
                String::from_utf8_lossy(m.payload())
            ));
            p.send(m).map_err(|e| format!("server send: {e}"))?;
        }
        Ok(got)
    });
    let pipes: Vec<_> = (0..6)
        .map(|_| duct::dial(&addr, DialOptions::default()).unwrap())
        .collect();
    for (i, p) in pipes.iter().enumerate() {
        if let Err(e) = p.send(format!("hello {i}")) {
            let ids: Vec<_> = pipes
                .iter()
                .map(|p| (p.session_id(), p.local_addr().to_string()))
                .collect();
            panic!(
                "client send {i}: {e}; client sessions {ids:?}; server said {:?}",
                server.join()
            );
        }
    }
    for (i, p) in pipes.iter().enumerate() {
        let m = p
            .recv_with(&RecvOptions::default().timeout(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(m.payload(), format!("hello {i}").as_bytes());
    }
    server.join().unwrap().unwrap();
    if cfg!(not(target_os = "linux")) {
        return; // (threads are counted in /proc/self/task)
    }
    // A new thread names itself once it first runs: under load that can trail its creation.
    let reactors = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .filter(|n| n.starts_with("duct-reactor"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reactors() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(reactors(), 3);
    let e = duct::set_reactor_threads(1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}
