//! `set_reactor_threads` before first use sets how many reactor threads serve the process;
//! after first use it is refused. One test per file: the reactor is process-wide.

use std::time::Duration;

use duct::{DialOptions, ErrorKind, ListenOptions, RecvOptions};

#[test]
fn reactor_thread_count_is_configurable_before_first_use() {
    duct::set_reactor_threads(3).unwrap();
    let listener = duct::listen(
        &format!("uds://@duct-reactor-threads-{}", std::process::id()),
        ListenOptions::default(),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let server = std::thread::spawn(move || {
        let pipes: Vec<_> = (0..6).map(|_| listener.accept().unwrap()).collect();
        for p in &pipes {
            let m = p
                .recv_with(&RecvOptions::default().timeout(Duration::from_secs(5)))
                .unwrap();
            p.send(m).unwrap();
        }
    });
    let pipes: Vec<_> = (0..6)
        .map(|_| duct::dial(&addr, DialOptions::default()).unwrap())
        .collect();
    for (i, p) in pipes.iter().enumerate() {
        p.send(format!("hello {i}")).unwrap();
    }
    for (i, p) in pipes.iter().enumerate() {
        let m = p
            .recv_with(&RecvOptions::default().timeout(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(m.payload(), format!("hello {i}").as_bytes());
    }
    server.join().unwrap();
    let reactors = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with("duct-reactor"))
        .count();
    assert_eq!(reactors, 3);
    let e = duct::set_reactor_threads(1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}
