//! The orchestrator's dashboard in a real browser: headless Chromium (Debian's `chromium`)
//! driven over the Chrome DevTools protocol. The page lists the live workers' pids, a click on
//! its crash-master button replaces the master, and the page shows the new master without a
//! reload. The screenshot is kept as a test artefact in `target/test-artefacts/dashboard.png`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{embedded_up, Client, ADMIN_TOKEN};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::BufRead;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium and one page of it, spoken to over the DevTools protocol.
struct Browser {
    process: std::process::Child,
    _profile: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

impl Browser {
    async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut process = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,720",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("Debian's chromium package must be installed (apt-get install chromium)");
        // Chromium says where its DevTools listen on stderr. The thread keeps draining it, so
        // chromium never blocks on a full pipe.
        let stderr = process.stderr.take().unwrap();
        let (found, url) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.trim().to_owned());
                }
            }
        });
        let browser_url =
            tokio::task::spawn_blocking(move || url.recv_timeout(Duration::from_secs(30)))
                .await
                .unwrap()
                .expect("chromium did not open DevTools within 30 s");
        let port = browser_url
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let targets: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page_url = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("chromium has a page")
            .to_owned();
        let (page, _) = tokio_tungstenite::connect_async(page_url).await.unwrap();
        Browser {
            process,
            _profile: profile,
            page,
            next_id: 0,
        }
    }

    /// One DevTools command; events that arrive meanwhile are skipped.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::Text(command.to_string().into()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = self.page.next().await {
                if let Message::Text(text) = message.unwrap() {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["id"] == id {
                        return value;
                    }
                }
            }
            panic!("the DevTools connection closed");
        })
        .await
        .unwrap_or_else(|_| panic!("{method} got no answer within 30 s"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// A real mouse click in the middle of the element `selector`.
    async fn click(&mut self, selector: &str) {
        let at = self
            .eval(&format!(
                "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect();
                   return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": at[0], "y": at[1], "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// The worker cards the page shows: (pid, role), in page order.
    async fn cards(&mut self) -> Vec<(u64, String)> {
        let cards = self
            .eval(
                "[...document.querySelectorAll('.worker')]
                   .map(e => [Number(e.dataset.pid), e.dataset.role])",
            )
            .await;
        serde_json::from_value(cards).unwrap_or_default()
    }

    /// Polls the cards until `check` holds, at most `bound`.
    async fn wait_for_cards(
        &mut self,
        bound: Duration,
        check: impl Fn(&[(u64, String)]) -> bool,
    ) -> Vec<(u64, String)> {
        let started = Instant::now();
        loop {
            let cards = self.cards().await;
            if check(&cards) || started.elapsed() > bound {
                return cards;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn artefact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artefacts").join(name)
}

fn master_of(cards: &[(u64, String)]) -> Option<u64> {
    cards.iter().find(|(_, role)| role == "master").map(|c| c.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_workers_and_shows_the_new_master_after_its_crash_button() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c) = embedded_up(dir.path(), |_| {}).await;
    let pids = c.pids().await;
    // Some traffic, so the figures are not all zero.
    for i in 0..3 {
        c.add_user(&format!("dash-{i}")).await;
        c.users().await;
    }

    let mut browser = Browser::launch().await;
    browser
        .call(
            "Page.navigate",
            json!({"url": format!("http://{}/", up.orchestrator)}),
        )
        .await;
    // The system runs with an admin token: typed into the page, as an operator would.
    let typed = Instant::now();
    while browser
        .eval(&format!(
            "(() => {{ const t = document.getElementById('token'); if (!t) return false; \
             t.value = '{ADMIN_TOKEN}'; t.dispatchEvent(new Event('input')); return true; }})()"
        ))
        .await
        != json!(true)
    {
        assert!(
            typed.elapsed() < Duration::from_secs(10),
            "the page did not load"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cards = browser
        .wait_for_cards(Duration::from_secs(10), |cards| {
            let shown: Vec<u64> = cards.iter().map(|c| c.0).collect();
            shown == pids && master_of(cards).is_some()
        })
        .await;
    let shown: Vec<u64> = cards.iter().map(|c| c.0).collect();
    assert_eq!(shown, pids, "the page lists the live workers' pids");
    let old_master = master_of(&cards).expect("the page shows a master");

    // Marks this page load: a reload would lose it.
    browser.eval("window.loadedOnce = 'yes'").await;
    browser.click("#crash-master").await;

    let cards = browser
        .wait_for_cards(Duration::from_secs(10), |cards| {
            master_of(cards).is_some_and(|m| m != old_master)
                && cards.len() == 2
                && !cards.iter().any(|c| c.0 == old_master)
        })
        .await;
    let new_master = master_of(&cards);
    assert!(
        new_master.is_some_and(|m| m != old_master),
        "the page shows a new master after the crash button: {cards:?} (old {old_master})"
    );
    assert!(
        !cards.iter().any(|c| c.0 == old_master),
        "the crashed master is gone from the page: {cards:?}"
    );
    let live = c.pids().await;
    assert!(
        live.contains(&new_master.unwrap()) && !live.contains(&old_master),
        "the page agrees with worker/list {live:?}: {cards:?}"
    );
    assert_eq!(
        browser.eval("window.loadedOnce").await,
        json!("yes"),
        "the page was not reloaded"
    );
    // The failover is listed too.
    let failovers = browser
        .eval("document.getElementById('failovers').textContent")
        .await;
    let failovers = failovers.as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    let mut failovers = failovers;
    while !failovers.contains(&format!("pid {old_master}"))
        && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        failovers = browser
            .eval("document.getElementById('failovers').textContent")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    assert!(
        failovers.contains(&format!("pid {old_master}")),
        "the failover is listed: {failovers:?}"
    );

    // A little steady traffic, so the picture shows rates, then the shot.
    let load = tokio::spawn({
        let c = Client::new(&up);
        async move {
            let started = Instant::now();
            let mut i = 0;
            while started.elapsed() < Duration::from_millis(2500) {
                c.add_user(&format!("steady-{i}")).await;
                c.users().await;
                i += 1;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let shot = artefact("dashboard.png");
    browser.screenshot(&shot).await;
    load.await.unwrap();
    println!("screenshot: {}", shot.display());
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    // The page still holds its event stream open: stopping must end it, not wait for it.
    tokio::time::timeout(Duration::from_secs(10), up.stop())
        .await
        .expect("up stops within 10 s while the dashboard is open")
        .unwrap();
}
