//! A small game cluster on one host: a gateway, two world servers and a DB proxy, each its
//! own process, talking duct over three transports; one world server is killed with SIGKILL
//! midway and restarted, and not one inventory change is lost.
//!
//! ```text
//!                 uds://@…-world-1  ┌─────────┐
//!             ┌────────────────────►│ world-1 │──┐ tcp://127.0.0.1:<port>
//! ┌─────────┐ │ positions: realtime └─────────┘  │  (inventory, reliable)  ┌──────────┐
//! │ gateway │─┤ inventory: reliable              ├────────────────────────►│ DB proxy │
//! └─────────┘ │                     ┌─────────┐  │                         └──────────┘
//!      ▲      └────────────────────►│ world-2 │──┘                               │
//!      │          shm://…-world-2   └─────────┘                                  │
//!      └──────────────── commits (reliable): "change N is stored" ───────────────┘
//! ```
//!
//! - **Positions** (channel 1) are realtime: `Backpressure::DropOld` with a send queue of
//!   256, a 50 ms TTL and priority 200. A stale position is worthless, so duct drops the
//!   oldest when a world cannot keep up and expires what waited too long, and counts both.
//!   world-1 stalls for 120 ms every second (a slow simulation frame) to show it.
//! - **Inventory changes** (channel 2) are reliable (`ChannelOptions::reliable(true)`): the
//!   gateway sends each one to its player's world server, which forwards it to the DB proxy.
//! - **Commits** (channel 3, reliable): the DB proxy tells the gateway which changes it stored.
//!
//! duct's reliable channels deliver at least once while both processes live, across any
//! number of reconnects. A process that dies takes what it had received with it, so the
//! application closes that gap itself, with the usual pattern: the gateway keeps every change
//! in an outbox until the DB has committed it; when its pipe to a world server comes back as
//! a *new* session ([`ErrorKind::SessionLost`]: the peer restarted), it sends that world's
//! uncommitted changes again. The DB may then see a change twice, so it applies each change
//! id once (idempotency) and commits duplicates again without applying them.
//!
//! The gateway dials the worlds with [`DialOptions::reconnect`], so its pipe to world-2 comes
//! back by itself once world-2 is restarted. At the end the gateway prints, per channel, what
//! it sent and what was delivered, dropped and expired ([`Pipe::stats`]), and exits non-zero
//! if any inventory change is missing from the DB.
//!
//! Run: `cargo run -p duct --example game_cluster` (about 10 s), or with `--fast` (or
//! `DUCT_EXAMPLE_FAST=1`) for a 2.5 s run. The launcher re-executes this binary once per
//! role (`game_cluster db|world|gateway …`); a guard kills and reaps every child if the
//! launcher fails, and the children die with it if it is killed. Socket names include the
//! launcher's pid, so parallel runs do not collide; nothing is left behind (abstract Unix
//! socket names and shm segments vanish with their processes). Linux only (`shm://`).
//!
//! [`ErrorKind::SessionLost`]: duct::ErrorKind::SessionLost
//! [`DialOptions::reconnect`]: duct::DialOptions::reconnect
//! [`Pipe::stats`]: duct::Pipe::stats
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::error::Error;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duct::{
    Backpressure, ChannelOptions, CloseOptions, DialOptions, ErrorKind, ListenOptions, Message,
    PeerInfo, Pipe, PipeState, Reconnect, RecvOptions, SendOptions, StateChange,
};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// What every process agrees on
// ---------------------------------------------------------------------------------------------

/// Control messages: hello, report requests and answers.
const CONTROL: u16 = 0;
/// Player positions, gateway → world: realtime.
const POSITIONS: u16 = 1;
/// Inventory changes, gateway → world → DB: reliable.
const INVENTORY: u16 = 2;
/// Commits, DB → gateway: reliable.
const COMMITS: u16 = 3;

/// A position older than this is worthless.
const POSITION_TTL: Duration = Duration::from_millis(50);
/// The gateway's frame: every tick it sends each player's position and a few inventory
/// changes.
const TICK: Duration = Duration::from_millis(10);
/// Players per world server.
const PLAYERS: u32 = 64;
/// Inventory changes per tick (spread over both worlds).
const CHANGES_PER_TICK: u64 = 4;

const WORLDS: [&str; 2] = ["world-1", "world-2"];

/// Presented by every dialer, checked by every listener's `authenticate` hook. It travels in
/// the clear on tcp://: across hosts, use tls:// (see the `tls` example).
const TOKEN: &[u8] = b"duct-example-cluster-token";

/// Positions: newest wins. At 256 queued messages the oldest is dropped; whatever waits
/// longer than 50 ms (in the sender's queue or the receiver's) expires; ahead of the other
/// channels in both queues.
fn positions() -> ChannelOptions {
    ChannelOptions::default()
        .backpressure(Backpressure::DropOld)
        .snd_hwm_msgs(256)
        .ttl(POSITION_TTL)
        .priority(200)
}

/// Inventory changes and commits: at least once, in order.
fn reliable() -> ChannelOptions {
    ChannelOptions::default().reliable(true)
}

fn check_token(peer: &PeerInfo) -> std::result::Result<(), String> {
    match peer.token.as_deref() {
        Some(TOKEN) => Ok(()),
        _ => Err(format!("{}: no valid cluster token", peer.addr)),
    }
}

/// The run's timing: the default, or the CI setting.
#[derive(Clone, Copy)]
struct Settings {
    fast: bool,
    /// How long the gateway sends.
    run: Duration,
    /// When (after the gateway started) world-2 is killed.
    kill_after: Duration,
    /// How long world-2 stays down.
    downtime: Duration,
    /// world-1 stalls for [`STALL`] this often.
    stall_every: Duration,
}

/// How long world-1's slow frames last: longer than the position TTL.
const STALL: Duration = Duration::from_millis(120);

impl Settings {
    fn from_args() -> Settings {
        let fast = std::env::args().any(|a| a == "--fast")
            || std::env::var("DUCT_EXAMPLE_FAST").is_ok_and(|v| !v.is_empty() && v != "0");
        if fast {
            Settings {
                fast,
                run: Duration::from_millis(2500),
                kill_after: Duration::from_millis(1000),
                downtime: Duration::from_millis(150),
                stall_every: Duration::from_millis(500),
            }
        } else {
            Settings {
                fast,
                run: Duration::from_secs(10),
                kill_after: Duration::from_secs(4),
                downtime: Duration::from_millis(300),
                stall_every: Duration::from_secs(1),
            }
        }
    }
}

/// A receive that may find nothing: `Ok(false)` for a timeout or an empty queue.
fn got_some(r: duct::Result<usize>) -> duct::Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends every message of `msgs`: `send_batch` returns how many it accepted, and the rest
/// go in the next call.
fn send_all(pipe: &Pipe, msgs: &[Message]) -> duct::Result<()> {
    let mut rest = msgs;
    while !rest.is_empty() {
        let n = pipe.send_batch(rest.iter().cloned(), &SendOptions::default())?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Waits (up to `timeout`) for the next message on the control channel, skipping others.
fn control_reply(pipe: &Pipe, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = pipe.recv_with(&RecvOptions::default().timeout(left))?;
        if msg.channel() == CONTROL {
            return Ok(String::from_utf8_lossy(msg.payload()).into_owned());
        }
    }
}

/// The numbers in `text` after its first word.
fn numbers(text: &str) -> Vec<i64> {
    text.split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// An inventory change
// ---------------------------------------------------------------------------------------------

/// `delta` of `item` for `player`, with a cluster-wide unique `id`: the DB applies each id
/// once, however often it arrives.
struct Change {
    id: u64,
    world: usize,
    player: u32,
    item: u32,
    delta: i64,
}

impl Change {
    fn to_message(&self) -> Message {
        let text = format!(
            "inv {} {} {} {} {}",
            self.id, self.world, self.player, self.item, self.delta
        );
        Message::new(text).with_channel(INVENTORY)
    }

    fn parse(payload: &[u8]) -> Option<Change> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut w = text.split_whitespace();
        (w.next()? == "inv").then_some(())?;
        Some(Change {
            id: w.next()?.parse().ok()?,
            world: w.next()?.parse().ok()?,
            player: w.next()?.parse().ok()?,
            item: w.next()?.parse().ok()?,
            delta: w.next()?.parse().ok()?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The DB proxy: stores each change once, commits it to the gateway
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Store {
    applied: HashSet<u64>,
    duplicates: u64,
    inventory: HashMap<(u32, u32), i64>,
    items_total: i64,
}

#[derive(Default)]
struct Db {
    store: Mutex<Store>,
    /// The gateway's pipe, for commits, once it said hello.
    gateway: Mutex<Option<Pipe>>,
    gateway_known: Condvar,
}

impl Db {
    fn gateway(&self) -> Result<Pipe> {
        let g = self.gateway.lock().unwrap();
        let (g, _) = self
            .gateway_known
            .wait_timeout_while(g, Duration::from_secs(5), |g| g.is_none())
            .unwrap();
        g.clone()
            .ok_or_else(|| "the gateway never said hello".into())
    }
}

fn db_main() -> Result<()> {
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default()
            .authenticate(check_token)
            .channel(INVENTORY, reliable())
            .channel(COMMITS, reliable()),
    )?;
    // The launcher reads the port from this line.
    println!("ready {}", listener.local_addr());
    let db = Arc::new(Db::default());
    let (done_tx, done) = mpsc::channel::<()>();
    {
        let db = Arc::clone(&db);
        thread::spawn(move || loop {
            let Ok(pipe) = listener.accept() else { return };
            let (db, done_tx) = (Arc::clone(&db), done_tx.clone());
            thread::spawn(move || {
                if let Err(e) = db_serve(&db, &pipe, &done_tx) {
                    println!("pipe from {} failed: {e}", pipe.peer_addr());
                }
            });
        });
    }
    // The gateway's close ends the run.
    let _ = done.recv();
    let store = db.store.lock().unwrap();
    println!(
        "stored {} changes ({} duplicates ignored by id); {} items in {} inventory slots",
        store.applied.len(),
        store.duplicates,
        store.items_total,
        store.inventory.len()
    );
    Ok(())
}

fn db_serve(db: &Db, pipe: &Pipe, done: &mpsc::Sender<()>) -> Result<()> {
    let hello = control_reply(pipe, Duration::from_secs(5))?;
    let who = hello.strip_prefix("hello ").unwrap_or("?").to_owned();
    println!("{who} connected from {}", pipe.peer_addr());
    if who == "gateway" {
        *db.gateway.lock().unwrap() = Some(pipe.clone());
        db.gateway_known.notify_all();
        loop {
            match pipe.recv() {
                Ok(msg) if msg.channel() == CONTROL && msg.payload() == b"report" => {
                    let s = db.store.lock().unwrap();
                    let reply =
                        format!("db {} {} {}", s.applied.len(), s.duplicates, s.items_total);
                    drop(s);
                    pipe.send(reply)?;
                }
                Ok(_) => {}
                Err(e) => {
                    println!("the gateway's pipe ended: {e}");
                    let _ = done.send(());
                    return Ok(());
                }
            }
        }
    }
    // A world server: store its changes, commit them to the gateway.
    let mut batch = Vec::new();
    loop {
        batch.clear();
        if let Err(e) = pipe.recv_batch(&mut batch, 256, &RecvOptions::default()) {
            // world-2's first process ends here with `Disconnected` when it is killed.
            println!("{who}'s pipe ended: {e}");
            return Ok(());
        }
        let mut ids = Vec::with_capacity(batch.len() * 8);
        {
            let mut s = db.store.lock().unwrap();
            for change in batch.iter().filter_map(|m| Change::parse(m.payload())) {
                if s.applied.insert(change.id) {
                    *s.inventory.entry((change.player, change.item)).or_default() += change.delta;
                    s.items_total += change.delta;
                } else {
                    s.duplicates += 1;
                }
                // Committed again if it was a duplicate: the gateway may be waiting for it.
                ids.extend_from_slice(&change.id.to_le_bytes());
            }
        }
        if !ids.is_empty() {
            db.gateway()?
                .send(Message::new(ids).with_channel(COMMITS))?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A world server: simulates positions, forwards inventory changes to the DB
// ---------------------------------------------------------------------------------------------

#[cfg(unix)] // (reads the effective uid; the example runs on Linux only)
fn world_main(settings: Settings, name: &str, addr: &str, db_addr: &str) -> Result<()> {
    // Only processes of this user may connect (uds and shm report the peer's credentials),
    // and only with the cluster token.
    let uid = rustix::process::geteuid().as_raw();
    let listener = duct::listen(
        addr,
        ListenOptions::default()
            .allow_uids([uid])
            .authenticate(check_token)
            .channel(POSITIONS, positions())
            .channel(INVENTORY, reliable()),
    )?;
    let db = duct::dial(
        db_addr,
        DialOptions::default()
            .token(TOKEN)
            .channel(INVENTORY, reliable()),
    )?;
    db.send(format!("hello {name} (pid {})", std::process::id()))?;
    println!("ready on {addr} (pid {})", std::process::id());

    let gateway = listener.accept()?;
    if let Some(c) = gateway.peer_credentials() {
        println!(
            "gateway connected over {}: pid {}, uid {}",
            listener.local_addr(),
            c.pid.unwrap_or(0),
            c.uid
        );
    }
    let stalls = name == "world-1";
    let mut next_stall = Instant::now() + settings.stall_every;
    let mut players: HashMap<u32, (i64, i64)> = HashMap::new();
    let mut batch = Vec::with_capacity(1024);
    let mut forward = Vec::new();
    let wait = RecvOptions::default().timeout(TICK);
    loop {
        batch.clear();
        match got_some(gateway.recv_batch(&mut batch, 1024, &wait)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Closed => {
                println!("the gateway closed the pipe: {e}");
                break;
            }
            Err(e) => return Err(e.into()),
        }
        for msg in batch.drain(..) {
            match msg.channel() {
                POSITIONS => {
                    let v = numbers(&String::from_utf8_lossy(msg.payload()));
                    if let [player, x, y, ..] = v[..] {
                        players.insert(player as u32, (x, y));
                    }
                }
                // Forwarded as is: the payload is not copied, only its handle.
                INVENTORY => forward.push(msg),
                CONTROL if msg.payload() == b"report" => {
                    send_all(&db, &forward)?;
                    forward.clear();
                    let stats = gateway.stats();
                    let pos = stats.channel(POSITIONS).unwrap_or_default();
                    let inv = stats.channel(INVENTORY).unwrap_or_default();
                    gateway.send(format!(
                        "report {} {} {} {}",
                        std::process::id(),
                        pos.msgs_received,
                        pos.expired,
                        inv.msgs_received
                    ))?;
                }
                _ => {}
            }
        }
        send_all(&db, &forward)?;
        forward.clear();
        if stalls && Instant::now() >= next_stall {
            // A slow simulation frame: positions pile up meanwhile, and expire.
            thread::sleep(STALL);
            next_stall += settings.stall_every;
        }
    }
    println!("{} players tracked; closing", players.len());
    db.close_with(CloseOptions::default().reason(4001, "world server shutting down"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The gateway: the players' traffic, the outbox of inventory changes, the final report
// ---------------------------------------------------------------------------------------------

struct Gateway {
    worlds: Vec<Pipe>,
    db: Pipe,
    /// Every inventory change the DB has not committed yet, by id.
    outbox: BTreeMap<u64, (usize, Message)>,
    /// Changes sent again after a world server restarted.
    resent: u64,
    events: mpsc::Receiver<(usize, StateChange)>,
    commit_buf: Vec<Message>,
}

impl Gateway {
    /// Takes the DB's commits: those changes leave the outbox.
    fn take_commits(&mut self) -> duct::Result<()> {
        let now = RecvOptions::default().timeout(Duration::ZERO);
        while got_some(self.db.recv_batch(&mut self.commit_buf, 256, &now))? {
            for msg in self.commit_buf.drain(..) {
                if msg.channel() != COMMITS {
                    continue;
                }
                for id in msg.payload().chunks_exact(8) {
                    self.outbox
                        .remove(&u64::from_le_bytes(id.try_into().unwrap()));
                }
            }
        }
        Ok(())
    }

    /// Reacts to the world pipes' state changes (reported by `on_state_change`).
    fn handle_events(&mut self) -> duct::Result<()> {
        while let Ok((w, change)) = self.events.try_recv() {
            let cause = change.cause.as_ref();
            println!(
                "{}: pipe {} -> {}{}",
                WORLDS[w],
                change.from,
                change.to,
                cause.map_or(String::new(), |e| format!(" ({})", e.kind()))
            );
            // Back, but as a new session: the world server restarted, and what it had
            // received and not yet passed on is gone. Send its uncommitted changes again.
            if change.to == PipeState::Connected
                && cause.is_some_and(|e| e.kind() == ErrorKind::SessionLost)
            {
                let again: Vec<Message> = self
                    .outbox
                    .values()
                    .filter(|(world, _)| *world == w)
                    .map(|(_, msg)| msg.clone())
                    .collect();
                send_all(&self.worlds[w], &again)?;
                self.resent += again.len() as u64;
                println!(
                    "{}: a new session (the server restarted): {} uncommitted inventory \
                     changes sent again",
                    WORLDS[w],
                    again.len()
                );
            }
        }
        Ok(())
    }
}

fn gateway_main(settings: Settings, world_addrs: &[String], db_addr: &str) -> Result<()> {
    let db = duct::dial(
        db_addr,
        DialOptions::default()
            .token(TOKEN)
            .channel(INVENTORY, reliable())
            .channel(COMMITS, reliable()),
    )?;
    db.send("hello gateway")?;
    let (events_tx, events) = mpsc::channel();
    let mut worlds = Vec::new();
    for (w, addr) in world_addrs.iter().enumerate() {
        let events_tx = events_tx.clone();
        let opts = DialOptions::default()
            .token(TOKEN)
            .channel(POSITIONS, positions())
            .channel(INVENTORY, reliable())
            .reconnect(Reconnect::exponential(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            // Runs on a duct thread: hand the change to the main loop, nothing more.
            .on_state_change(move |change| {
                let _ = events_tx.send((w, change));
            })
            .on_error(move |e| {
                if e.kind() != ErrorKind::SessionLost {
                    println!("{}: {e}", WORLDS[w]);
                }
            });
        worlds.push(duct::dial(addr, opts)?);
        println!("connected to {} at {addr}", WORLDS[w]);
    }
    let mut gw = Gateway {
        worlds,
        db,
        outbox: BTreeMap::new(),
        resent: 0,
        events,
        commit_buf: Vec::new(),
    };
    println!("running");

    // The game: every tick, every player's position, and a few inventory changes.
    let mut rng = fastrand::Rng::with_seed(7);
    let started = Instant::now();
    let (mut issued, mut items_total, mut tick) = (0u64, 0i64, 0u64);
    let mut positions_batch = Vec::with_capacity(PLAYERS as usize);
    while started.elapsed() < settings.run {
        let frame = Instant::now();
        for (w, pipe) in gw.worlds.iter().enumerate() {
            positions_batch.clear();
            for p in 0..PLAYERS {
                let player = w as u32 * PLAYERS + p;
                let (x, y) = (rng.i32(-1000..1000), rng.i32(-1000..1000));
                let text = format!("pos {player} {x} {y} {tick}");
                positions_batch.push(Message::new(text).with_channel(POSITIONS));
            }
            // DropOld never blocks: a full queue drops its oldest position.
            send_all(pipe, &positions_batch)?;
        }
        for _ in 0..CHANGES_PER_TICK {
            issued += 1;
            let change = Change {
                id: issued,
                world: (issued % 2) as usize,
                player: rng.u32(0..PLAYERS),
                item: rng.u32(1..20),
                delta: rng.i64(1..5),
            };
            items_total += change.delta;
            let msg = change.to_message();
            gw.outbox.insert(change.id, (change.world, msg.clone()));
            // Queued while the pipe reconnects (the channel blocks only when its queue is
            // full).
            gw.worlds[change.world].send(msg)?;
        }
        gw.take_commits()?;
        gw.handle_events()?;
        tick += 1;
        thread::sleep(TICK.saturating_sub(frame.elapsed()));
    }
    println!(
        "stopped after {:.1?}: {issued} inventory changes issued, {} not committed yet",
        started.elapsed(),
        gw.outbox.len()
    );

    // Wait for the DB to commit everything still in the outbox.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw.outbox.is_empty() && Instant::now() < deadline {
        gw.take_commits()?;
        gw.handle_events()?;
        thread::sleep(Duration::from_millis(5));
    }
    let mut failures = Vec::new();
    if !gw.outbox.is_empty() {
        let ids: Vec<u64> = gw.outbox.keys().take(20).copied().collect();
        failures.push(format!(
            "{} inventory changes were never committed (first ids: {ids:?})",
            gw.outbox.len()
        ));
    }

    // The report: per channel, what this side sent, dropped and expired, and what each world
    // received and expired.
    let mut world_reports = Vec::new();
    for pipe in &gw.worlds {
        pipe.send("report")?;
        world_reports.push(numbers(&control_reply(pipe, Duration::from_secs(5))?));
    }
    gw.db.send("report")?;
    let db_report = numbers(&control_reply(&gw.db, Duration::from_secs(5))?);
    println!();
    println!("channel 1, positions (realtime: DropOld, send queue 256, TTL 50 ms):");
    println!(
        "  {:<8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>12}",
        "world", "sent", "delivered", "dropped", "expired", "expired", "unaccounted"
    );
    println!(
        "  {:<8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>12}",
        "", "", "", "(gw)", "(gw)", "(world)", ""
    );
    for (w, pipe) in gw.worlds.iter().enumerate() {
        let s = pipe.stats().channel(POSITIONS).unwrap_or_default();
        let (delivered, expired_there) = match world_reports[w][..] {
            [_, delivered, expired, ..] => (delivered as u64, expired as u64),
            _ => (0, 0),
        };
        let unaccounted = s
            .msgs_sent
            .saturating_sub(delivered + s.dropped + s.expired + expired_there);
        println!(
            "  {:<8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>12}",
            WORLDS[w], s.msgs_sent, delivered, s.dropped, s.expired, expired_there, unaccounted
        );
    }
    println!("channel 2, inventory changes (reliable):");
    println!(
        "  {:<8} {:>8} {:>10} {:>8} {:>8} {:>12}",
        "world", "sent", "delivered", "dropped", "expired", "retransmits"
    );
    for (w, pipe) in gw.worlds.iter().enumerate() {
        let s = pipe.stats().channel(INVENTORY).unwrap_or_default();
        let delivered = world_reports[w].get(3).copied().unwrap_or(0);
        println!(
            "  {:<8} {:>8} {:>10} {:>8} {:>8} {:>12}",
            WORLDS[w], s.msgs_sent, delivered, s.dropped, s.expired, s.retransmits
        );
    }
    println!(
        "  (unaccounted = sent - delivered - dropped - expired: 0 for a pipe whose peer lives. \
         world-2's counts are its second process's: the first one's died with it, so what it \
         received, and what was in flight when it was killed, is unaccounted)"
    );
    for (w, pipe) in gw.worlds.iter().enumerate() {
        let s = pipe.stats();
        println!(
            "  pipe to {}: {} reconnects, state {}",
            WORLDS[w],
            s.reconnects,
            pipe.state()
        );
    }
    let commits = gw.db.stats().channel(COMMITS).unwrap_or_default();
    println!(
        "channel 3, commits (reliable): {} received",
        commits.msgs_received
    );
    let (stored, duplicates, db_items) = match db_report[..] {
        [stored, duplicates, items, ..] => (stored as u64, duplicates as u64, items),
        _ => (0, 0, 0),
    };
    println!(
        "end to end: {issued} inventory changes issued, {stored} stored by the DB, {} sent again \
         after the restart, {duplicates} duplicates ignored by id; items {db_items} in the DB, \
         {items_total} expected",
        gw.resent
    );
    if stored != issued {
        failures.push(format!("the DB stored {stored} of {issued} changes"));
    }
    if db_items != items_total {
        failures.push(format!(
            "the DB holds {db_items} items, the changes add up to {items_total}"
        ));
    }

    let bye = || CloseOptions::default().reason(4000, "match over");
    for pipe in &gw.worlds {
        pipe.close_with(bye())?;
    }
    gw.db.close_with(bye())?;
    if failures.is_empty() {
        println!("OK: every inventory change arrived, and was applied exactly once");
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

// ---------------------------------------------------------------------------------------------
// The launcher: starts the processes, kills and restarts world-2, collects the outcome
// ---------------------------------------------------------------------------------------------

/// The child processes, killed (SIGKILL) and reaped on drop: a launcher that fails or
/// panics leaves no process behind.
struct Cluster {
    children: Vec<(String, Child)>,
    lines: mpsc::Sender<(String, String)>,
}

impl Cluster {
    /// Starts this binary as `name` with `args`; its output lines are printed with its name
    /// and passed on to the launcher.
    fn spawn(&mut self, name: &str, args: &[&str], settings: Settings) -> Result<u32> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if settings.fast {
            cmd.arg("--fast");
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let out = child.stdout.take().ok_or("no stdout")?;
        let (label, lines) = (name.to_owned(), self.lines.clone());
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                println!("[{label:>8}] {line}");
                let _ = lines.send((label.clone(), line));
            }
        });
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Kills `name` with SIGKILL and reaps it.
    fn kill(&mut self, name: &str) -> Result<u32> {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .ok_or("no such child")?;
        let (_, mut child) = self.children.remove(i);
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        Ok(child.id())
    }

    /// Waits for `name` to exit, up to `timeout`.
    fn wait(&mut self, name: &str, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .ok_or("no such child")?;
        loop {
            if let Some(status) = self.children[i].1.try_wait()? {
                self.children.remove(i);
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!("{name} did not exit within {timeout:?}").into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                println!("[launcher] killing {name} (pid {})", child.id());
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Waits for a line from `who` starting with `prefix`; returns the rest of it.
fn expect_line(
    lines: &mpsc::Receiver<(String, String)>,
    who: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((from, line)) if from == who => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.trim().to_owned());
                }
            }
            Ok(_) => {}
            Err(_) => return Err(format!("{who} did not say {prefix:?} in time").into()),
        }
    }
}

fn launcher(settings: Settings) -> Result<()> {
    let started = Instant::now();
    let tag = format!("duct-example-{}", std::process::id());
    let world_addrs = [
        format!("uds://@{tag}-world-1"),
        format!("shm://{tag}-world-2"),
    ];
    let (lines_tx, lines) = mpsc::channel();
    let mut cluster = Cluster {
        children: Vec::new(),
        lines: lines_tx,
    };
    let up = Duration::from_secs(10);

    cluster.spawn("db", &["db"], settings)?;
    let db_addr = expect_line(&lines, "db", "ready ", up)?;
    for (name, addr) in WORLDS.iter().zip(&world_addrs) {
        cluster.spawn(name, &["world", name, addr, &db_addr], settings)?;
        expect_line(&lines, name, "ready", up)?;
    }
    let gateway_args = ["gateway", &world_addrs[0], &world_addrs[1], &db_addr];
    cluster.spawn("gateway", &gateway_args, settings)?;
    expect_line(&lines, "gateway", "running", up)?;

    // Midway: SIGKILL world-2, leave it down a moment, start a new one on the same address.
    thread::sleep(settings.kill_after);
    println!("[launcher] killing world-2 with SIGKILL");
    let pid = cluster.kill("world-2")?;
    println!("[launcher] world-2 (pid {pid}) is dead");
    thread::sleep(settings.downtime);
    let args = ["world", "world-2", &world_addrs[1], &db_addr];
    let pid = cluster.spawn("world-2", &args, settings)?;
    println!(
        "[launcher] world-2 restarted as pid {pid}, after {:?} down",
        settings.downtime
    );
    expect_line(&lines, "world-2", "ready", up)?;

    // The gateway decides: it checks that every inventory change arrived.
    let status = cluster.wait("gateway", settings.run + Duration::from_secs(60))?;
    if !status.success() {
        // (The guard kills the others.)
        return Err(format!("the gateway failed: {status}").into());
    }
    // The others end when the gateway closes its pipes.
    for name in ["world-1", "world-2", "db"] {
        let s = cluster.wait(name, Duration::from_secs(10))?;
        if !s.success() {
            return Err(format!("{name} failed: {s}").into());
        }
    }
    println!(
        "[launcher] all processes exited cleanly; the run took {:.1?}",
        started.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
fn main() -> ExitCode {
    let settings = Settings::from_args();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--fast").collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if !args.is_empty() {
        // A child dies with the launcher, however the launcher ends.
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    }
    let result = match args[..] {
        [] => launcher(settings),
        ["db"] => db_main(),
        ["world", name, addr, db] => world_main(settings, name, addr, db),
        ["gateway", w1, w2, db] => gateway_main(settings, &[w1.to_owned(), w2.to_owned()], db),
        _ => Err("usage: game_cluster [--fast] (or a role the launcher gives)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let who = args.first().copied().unwrap_or("launcher");
            println!("FAILED ({who}): {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!(
        "game_cluster runs on Linux only (it uses an abstract Unix socket name and a \
         parent-death signal for its children)"
    );
}
