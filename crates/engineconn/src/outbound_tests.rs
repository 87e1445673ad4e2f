use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use hangar_protocol::JobStatus;

use super::*;

fn log(task_id: i64, line: &str) -> TaskEvent {
    TaskEvent::Log { task_id, lines: vec![line.to_string()] }
}

fn queued(events: Vec<TaskEvent>) -> Vec<Queued> {
    events.into_iter().map(|event| Queued { callback_url: "http://e:1".into(), event }).collect()
}

#[test]
fn adjacent_logs_merge_but_keep_order() {
    let st = TaskEvent::Status { task_id: 1, status: JobStatus::Running, error: None, exit_code: None };
    let merged = merge_logs(queued(vec![log(1, "a"), log(1, "b"), st.clone(), log(1, "c"), log(2, "d")]));
    assert_eq!(merged.len(), 4);
    assert_eq!(merged[0].event, TaskEvent::Log { task_id: 1, lines: vec!["a".into(), "b".into()] });
    assert_eq!(merged[1].event, st);
}

#[test]
fn retries_back_off_to_eight_seconds_within_the_budget() {
    let mut r = Retry::new(DELIVERY_BUDGET);
    let gaps: Vec<Duration> = (0..8).filter_map(|_| r.next_gap()).collect();
    assert_eq!(gaps[0], Duration::from_millis(50));
    assert_eq!(gaps[5..], [MAX_GAP; 3]);
    assert!(gaps.iter().all(|g| *g <= MAX_GAP));
    let mut spent = Retry::new(Duration::ZERO);
    assert_eq!(spent.next_gap(), None);
}

/// A loopback HTTP server; its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A base URL nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// A control-plane instance that answers the manager's path with `status`.
async fn manager(status: StatusCode) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            MANAGER_RPC_PATH,
            post(move |State(hits): State<Arc<AtomicUsize>>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                (status, axum::Json(ManagerReply::known(true)))
            }),
        )
        .with_state(hits.clone());
    (serve(app).await, hits)
}

fn heartbeat() -> EngineToManager {
    EngineToManager::Heartbeat {
        ticket_id: "t-1".into(),
        status: hangar_protocol::NodeStatus::Unlock,
        metrics: Default::default(),
    }
}

#[tokio::test]
async fn the_manager_is_reached_past_a_dead_instance_and_one_without_a_leader() {
    let dead = dead_url().await;
    let (no_leader, no_leader_hits) = manager(StatusCode::SERVICE_UNAVAILABLE).await;
    let (leader, leader_hits) = manager(StatusCode::OK).await;
    let out = Outbound::new(&format!("{dead},{no_leader},{leader}"), "k".into()).expect("outbound");
    let reply = out.to_manager(&heartbeat()).await.expect("reached the leader");
    assert!(reply.known);
    assert_eq!((no_leader_hits.load(Ordering::SeqCst), leader_hits.load(Ordering::SeqCst)), (1, 1));
    // The one that answered is remembered: the next message goes straight there.
    out.to_manager(&heartbeat()).await.expect("again");
    assert_eq!((no_leader_hits.load(Ordering::SeqCst), leader_hits.load(Ordering::SeqCst)), (1, 2));
    assert_eq!(out.manager.current(), leader);
}

#[tokio::test]
async fn a_refusal_from_the_manager_is_final() {
    let (refusing, refusing_hits) = manager(StatusCode::UNAUTHORIZED).await;
    let (other, other_hits) = manager(StatusCode::OK).await;
    let out = Outbound::new(&format!("{refusing},{other}"), "k".into()).expect("outbound");
    let e = out.to_manager(&heartbeat()).await.expect_err("401 is final");
    assert!(format!("{e:#}").contains("401"), "{e:#}");
    assert_eq!((refusing_hits.load(Ordering::SeqCst), other_hits.load(Ordering::SeqCst)), (1, 0));
    let all_dead = Outbound::new(&format!("{},{}", dead_url().await, dead_url().await), "k".into()).expect("outbound");
    assert!(all_dead.to_manager(&heartbeat()).await.is_err());
}

/// An Entrance that records the tasks of the events it takes, and refuses
/// them (503) while `down`.
#[derive(Clone, Default)]
struct Recorder {
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    taken: Arc<Mutex<Vec<(i64, String)>>>,
}

impl Recorder {
    fn taken(&self) -> Vec<(i64, String)> {
        self.taken.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

async fn entrance(rec: Recorder) -> String {
    let app = Router::new()
        .route(
            ENTRANCE_RPC_PATH,
            post(|State(rec): State<Recorder>, axum::Json(batch): axum::Json<TaskEventBatch>| async move {
                if rec.down.load(Ordering::SeqCst) {
                    rec.refused.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let mut taken = rec.taken.lock().unwrap_or_else(|p| p.into_inner());
                for ev in batch.events {
                    if let TaskEvent::Log { task_id, lines } = ev {
                        taken.extend(lines.into_iter().map(|l| (task_id, l)));
                    }
                }
                StatusCode::OK
            }),
        )
        .with_state(rec);
    serve(app).await
}

#[tokio::test]
async fn a_redirected_task_s_waiting_events_go_to_its_new_entrance() {
    let (old, new) = (Recorder::default(), Recorder::default());
    old.down.store(true, Ordering::SeqCst);
    let (old_url, new_url) = (entrance(old.clone()).await, entrance(new.clone()).await);
    let (manager_url, _) = manager(StatusCode::OK).await;
    let out = Outbound::with_budget(&manager_url, "k".into(), Duration::from_secs(30)).expect("outbound");
    out.events(&old_url, vec![log(1, "one-a")]);
    out.events(&old_url, vec![log(2, "two-a")]);
    out.events(&old_url, vec![log(1, "one-b")]);
    // The old Entrance refuses them; the batch waits to be retried.
    let deadline = Instant::now() + Duration::from_secs(5);
    while old.refused.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the events never reached the old Entrance");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Task 1's job moved: its events go to the new Entrance at once (not
    // after the next gap); task 2's still wait for the old one.
    out.redirect(1, &new_url);
    let deadline = Instant::now() + Duration::from_secs(3);
    while new.taken().len() < 2 {
        assert!(Instant::now() < deadline, "task 1's events did not follow the redirect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(new.taken(), [(1, "one-a".to_string()), (1, "one-b".to_string())], "in order, task 1 only");
    assert!(old.taken().is_empty());
    old.down.store(false, Ordering::SeqCst);
    // Later events of task 1 go to the new Entrance, task 2's to the old one.
    out.events(&old_url, vec![log(1, "one-c")]);
    out.events(&old_url, vec![log(2, "two-b")]);
    tokio::time::timeout(Duration::from_secs(20), out.flush()).await.expect("flushed");
    assert_eq!(old.taken(), [(2, "two-a".to_string()), (2, "two-b".to_string())]);
    assert_eq!(new.taken().last(), Some(&(1, "one-c".to_string())));
}
