use super::activity::*;
use super::*;
use std::num::NonZeroUsize;

fn limits() -> ListenerLimits {
    ListenerLimits {
        max_connections: NonZeroUsize::new(1).unwrap(),
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn a_slow_request_gets_the_timeout_answer_and_is_not_cut_as_idle_meanwhile() {
    let limits = ListenerLimits {
        max_connections: NonZeroUsize::new(4).unwrap(),
        header_timeout: Duration::from_secs(2),
        // Shorter than the request: a request in progress is not idle.
        idle_timeout: Duration::from_millis(100),
        request_timeout: Duration::from_millis(400),
    };
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let http = Http {
        name: "api",
        limits,
        busy: b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        timed_out: |_| {
            axum::response::IntoResponse::into_response((
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "timed out",
            ))
        },
    };
    let metrics = ListenerMetrics::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn({
        let (metrics, cancel) = (metrics.clone(), cancel.clone());
        async move { http.serve(listener, app, &metrics, cancel).await }
    });

    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer));
    read.await.unwrap().unwrap();
    let took = start.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\ntimed out"), "{answer}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(metrics.refused("api", "request_timeout").get(), 1);
    assert_eq!(metrics.refused("api", "idle_timeout").get(), 0);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.open("api").get(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_expires_after_the_idle_timeout() {
    let a = Activity::new(&limits());
    let start = Instant::now();
    assert_eq!(a.expired().await, Expired::Idle);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_head_begun_while_the_watchdog_waits_expires_after_the_header_timeout() {
    let a = Activity::new(&limits());
    let start = Instant::now();
    let watchdog = a.expired();
    tokio::pin!(watchdog);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), watchdog.as_mut())
            .await
            .is_err()
    );
    a.read();
    assert_eq!(watchdog.await, Expired::Header);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_started_head_expires_after_the_header_timeout_and_a_request_stops_both() {
    let a = Activity::new(&limits());
    tokio::time::advance(Duration::from_secs(1)).await;
    a.read();
    let start = Instant::now();
    assert_eq!(a.expired().await, Expired::Header);
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    // While a request is answered neither runs; after it, idle does.
    let busy = a.busy();
    let waited = tokio::time::timeout(Duration::from_secs(60), a.expired()).await;
    assert!(waited.is_err(), "expired while busy");
    drop(busy);
    let start = Instant::now();
    assert_eq!(a.expired().await, Expired::Idle);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}
