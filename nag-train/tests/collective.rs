//! burn-collective 0.21 across processes, as `nag_train::parallel` uses it: two processes over
//! localhost, 20 consecutive all-reduces of different tensors. With one session for all of
//! them (burn's own usage) the second all-reduce never returns: its global sync keeps the
//! nodes of the first (`SyncService::sync` clears a copy of the list), so that test is ignored
//! and kept to show the upstream bug. A fresh session per all-reduce (register, all-reduce,
//! finish) sums correctly while the nodes keep pace; a node that registers the next session
//! before another's `finish` reached the coordinator gets a partial sum (its own tensor back).
//! So each tensor carries nag's two control slots (1 and the call index, summed): every sum is
//! either exact or seen to be partial, and a node that sees one stops (exit code 3), as a
//! training run stops with `ParallelError::PartialSum`. The second test provokes the race with
//! a 500 ms delay before one node's `finish` and asserts it is seen.

use std::process::Command;
use std::time::{Duration, Instant};

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{all_reduce, register, CollectiveConfig, PeerId, ReduceOperation};

type B = burn_ndarray::NdArray<f32>;
const CALLS: usize = 20;

/// Exit code of a node that saw a partial sum and stopped.
const PARTIAL: i32 = 3;

/// One node's all-reduces; `delay_finish`: rank 0 waits 500 ms before leaving that call's
/// session.
fn node(rank: u32, port: u16, fresh: bool, delay_finish: Option<usize>) {
    let dev = Default::default();
    if rank == 0 {
        nag_train::parallel::start_coordinator(port).unwrap();
    }
    let data = port + 1 + rank as u16;
    let cfg = CollectiveConfig::default()
        .with_num_devices(1)
        .with_num_nodes(2)
        .with_global_address(format!("ws://127.0.0.1:{port}").parse().unwrap())
        .with_node_address(format!("ws://127.0.0.1:{data}").parse().unwrap())
        .with_data_service_port(data);
    if !fresh {
        register::<B>(PeerId(rank), dev, cfg.clone()).unwrap();
    }
    for call in 0..CALLS {
        if fresh {
            register::<B>(PeerId(rank), dev, cfg.clone()).unwrap();
        }
        let mut v: Vec<f32> = (0..64)
            .map(|i| (call * 100 + i) as f32 * (rank + 1) as f32)
            .collect();
        v.extend([1.0, (call + 1) as f32]);
        let t = Tensor::<B, 1>::from_data(TensorData::new(v, [66]), &dev);
        let out = all_reduce::<B>(
            PeerId(rank),
            t.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .unwrap();
        let out: Vec<f32> = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(out))
            .into_data()
            .to_vec()
            .unwrap();
        if out[64..] != [2.0, 2.0 * (call + 1) as f32] {
            eprintln!("rank {rank}, all-reduce {call}: partial sum seen, stopping");
            std::process::exit(PARTIAL);
        }
        let want: Vec<f32> = (0..64).map(|i| (call * 100 + i) as f32 * 3.0).collect();
        assert_eq!(out[..64], want, "rank {rank}, all-reduce {call}");
        if fresh {
            if rank == 0 && delay_finish == Some(call) {
                std::thread::sleep(Duration::from_millis(500));
            }
            burn_collective::finish_collective::<B>(PeerId(rank)).unwrap();
        }
    }
}

fn free_port() -> u16 {
    loop {
        let p = std::net::TcpListener::bind(("0.0.0.0", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < 65000 && (1..3).all(|k| std::net::TcpListener::bind(("0.0.0.0", p + k)).is_ok()) {
            return p;
        }
    }
}

/// How a two-process run ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Every all-reduce summed exactly, on both nodes.
    Exact,
    /// A node saw a partial sum and stopped (the other was then stopped too).
    PartialSeen,
}

/// Runs `test` as two child processes (this binary again, one per rank).
fn two_processes(test: &str, fresh: bool, delay_finish: Option<usize>) -> Outcome {
    if let Ok(rank) = std::env::var("NAG_COLLECTIVE_RANK") {
        let port = std::env::var("NAG_COLLECTIVE_PORT")
            .unwrap()
            .parse()
            .unwrap();
        node(rank.parse().unwrap(), port, fresh, delay_finish);
        return Outcome::Exact;
    }
    let port = free_port().to_string();
    let exe = std::env::current_exe().unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", test, "--include-ignored", "--nocapture"])
                .env("NAG_COLLECTIVE_RANK", rank.to_string())
                .env("NAG_COLLECTIVE_PORT", &port)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    let (mut exited, mut partial) = ([false; 2], false);
    while exited.contains(&false) && !partial {
        for (rank, kid) in kids.iter_mut().enumerate() {
            if exited[rank] {
                continue;
            }
            if let Some(status) = kid.try_wait().unwrap() {
                exited[rank] = true;
                match status.code() {
                    Some(0) => {}
                    Some(PARTIAL) => partial = true,
                    _ => panic!("rank {rank} failed ({status})"),
                }
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!("a rank still waits after 60 s (exited: {exited:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A node that saw a partial sum stopped; the other may wait for it forever (a training run
    // stops it with --peer-timeout).
    for kid in &mut kids {
        let _ = kid.kill();
        let _ = kid.wait();
    }
    if partial {
        Outcome::PartialSeen
    } else {
        Outcome::Exact
    }
}

#[test]
fn a_fresh_session_per_all_reduce_sums_exactly_or_is_seen_to_fail() {
    let outcome = two_processes(
        "a_fresh_session_per_all_reduce_sums_exactly_or_is_seen_to_fail",
        true,
        None,
    );
    // Exact in nearly every run; a partial sum (the race) must at least be seen.
    if outcome == Outcome::PartialSeen {
        eprintln!("note: burn-collective's session race happened in this run and was seen");
    }
}

#[test]
fn a_late_finish_gives_a_partial_sum_and_it_is_seen() {
    let outcome = two_processes(
        "a_late_finish_gives_a_partial_sum_and_it_is_seen",
        true,
        Some(5),
    );
    assert_eq!(outcome, Outcome::PartialSeen);
}

#[test]
#[ignore = "burn-collective 0.21: the second all-reduce across processes in one session never returns (global sync never resets); nag opens a session per all-reduce instead"]
fn one_session_for_consecutive_all_reduces() {
    two_processes("one_session_for_consecutive_all_reduces", false, None);
}
