//! Just enough of the Chrome DevTools Protocol to drive Debian's Chromium headless: open a page,
//! evaluate JavaScript, click with the mouse, take a screenshot. Over one WebSocket to the
//! browser, with a flat session for the page.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Browser {
    child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: Option<String>,
    profile: PathBuf,
}

/// The browser binary: `$CHROMIUM` or Debian's.
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

impl Browser {
    /// Starts headless Chromium with a fresh profile and connects to it.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = std::env::temp_dir().join(fleetstream_testkit::unique("chromium-profile"));
        std::fs::create_dir_all(&profile).unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (run scripts/test-deps): {e}", chromium()));
        // Chromium prints where its DevTools endpoint listens; keep draining stderr afterwards
        // so it never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_string());
                    }
                }
                if std::env::var_os("CHROMIUM_LOG").is_some() {
                    eprintln!("chromium: {line}");
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|e| panic!("Chromium did not open its DevTools port: {e}"));
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap_or_else(|e| panic!("DevTools connect: {e}"));
        Browser { child, ws, next_id: 0, session: None, profile }
    }

    /// Sends a command (to the page session once there is one) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap_or_else(|e| panic!("{method}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next()).await.unwrap_or_else(|_| panic!("{method}: no answer within 60 s"));
            let Some(Ok(Message::Text(text))) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap_or_else(|e| panic!("{method}: DevTools sent a frame that is not JSON ({e}): {text}"));
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            // Events in between are not needed.
        }
    }

    /// Opens a new page of the given size and navigates it to `url`.
    pub async fn open(&mut self, url: &str, width: u32, height: u32) {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" })).await;
        let target_id = target["targetId"].as_str().unwrap_or_else(|| panic!("Target.createTarget returns a targetId: {target}")).to_string();
        let attached = self.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await;
        self.session = attached["sessionId"].as_str().map(str::to_string);
        self.call("Emulation.setDeviceMetricsOverride", json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }))
            .await;
        self.call("Page.enable", json!({})).await;
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Evaluates an expression in the page (promises awaited) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true })).await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; returns its value, or None after `within`.
    pub async fn wait_for(&mut self, expression: &str, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expression).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A real left click at page coordinates (press and release, as a mouse does).
    pub async fn click(&mut self, x: f64, y: f64) {
        self.call("Input.dispatchMouseEvent", json!({ "type": "mouseMoved", "x": x, "y": y })).await;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call("Input.dispatchMouseEvent", json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 })).await;
        }
    }

    /// A PNG of the page as it is shown.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let data = shot["data"].as_str().unwrap_or_else(|| panic!("Page.captureScreenshot returns data: {shot}"));
        base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_else(|e| panic!("the screenshot is base64: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
