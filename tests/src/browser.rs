//! A real browser for the e2e tests (issue 15): headless Chromium driven over WebDriver.
//! [`Browser::start`] runs `chromedriver --port=<free>` (found as [`locate_driver`] says),
//! waits until it listens, and opens a `fantoccini` session with headless Chromium in a
//! fresh profile. The helpers are blocking (the tests are plain `#[test]` functions) and wait
//! with the harness' [`eventually`](crate::eventually): find by CSS selector, read text, click,
//! type into a field, run a script, read a cookie, save a screenshot. Dropping the browser ends the session (Chromium quits) and kills the
//! driver. [`browser_or_skip`] skips loudly when Chromium is not installed, except under
//! `CI=true`, where that is a failure (the rule of `nats::cluster_or_skip`).

use std::{
    fmt,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator, wd::Capabilities};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::{eventually, free_port};

/// The environment variable that names the `chromedriver` binary to use.
pub const DRIVER_ENV: &str = "B24_CHROMEDRIVER";
/// The environment variable that names the Chromium binary to use.
pub const CHROMIUM_ENV: &str = "B24_CHROMIUM";
/// The environment variable naming a folder: when set, tests save their screenshots there.
pub const SCREENSHOTS_ENV: &str = "B24_SCREENSHOTS_DIR";

/// How long the driver may take to listen, and a session to open or close.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long the helpers wait for an element or a text before they fail the test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The window size of the screenshots.
pub const WINDOW: (u32, u32) = (1280, 900);

/// Why there is no browser.
#[derive(Debug)]
pub enum BrowserError {
    /// No chromedriver or no Chromium was found; tests may skip (outside CI) with this message.
    NotFound(String),
    /// They exist but the session did not start; always a failure.
    Start(String),
}

impl fmt::Display for BrowserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrowserError::NotFound(why) => write!(f, "no Chromium found: {why}"),
            BrowserError::Start(why) => write!(f, "the browser did not start: {why}"),
        }
    }
}

impl std::error::Error for BrowserError {}

/// Finds `chromedriver`: `$B24_CHROMEDRIVER`, else `chromedriver` on `PATH`, else
/// `/usr/bin/chromedriver` (Debian's `chromium-driver`).
pub fn locate_driver() -> Result<PathBuf, BrowserError> {
    locate(DRIVER_ENV, &["chromedriver"], "/usr/bin/chromedriver", "chromium-driver")
}

/// Finds Chromium: `$B24_CHROMIUM`, else `chromium` (or `chromium-browser`) on `PATH`, else
/// `/usr/bin/chromium`.
pub fn locate_chromium() -> Result<PathBuf, BrowserError> {
    locate(CHROMIUM_ENV, &["chromium", "chromium-browser"], "/usr/bin/chromium", "chromium")
}

fn locate(
    env: &str,
    names: &[&str],
    fallback: &str,
    package: &str,
) -> Result<PathBuf, BrowserError> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(BrowserError::NotFound(format!("{env}={} is not a file", path.display())))
        };
    }
    if let Some(path) = names.iter().find_map(|name| on_path(name)) {
        return Ok(path);
    }
    let fallback = PathBuf::from(fallback);
    if fallback.is_file() {
        return Ok(fallback);
    }
    Err(BrowserError::NotFound(format!(
        "set {env}, run scripts/test (installs Debian's {package}), or put {} on PATH",
        names[0]
    )))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Starts a browser for a test, or says loudly why the test is skipped: `None` when Chromium or
/// its driver is not installed and `CI` is not `true`. Under `CI=true` a missing browser panics
/// (CI must run these tests), and so does one that is there but does not start.
pub fn browser_or_skip(test: &str) -> Option<Browser> {
    match Browser::start() {
        Ok(browser) => Some(browser),
        Err(BrowserError::NotFound(why)) if std::env::var("CI").as_deref() != Ok("true") => {
            // Straight to the stderr handle: libtest captures `eprintln!`, and a skip must show.
            let _ = writeln!(
                std::io::stderr(),
                "\n==== SKIPPED {test}: no Chromium found: {why} ====\n==== (under CI=true this test fails) ====\n"
            );
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// A cookie as the browser keeps it.
#[derive(Debug, Clone)]
pub struct Cookie {
    /// The value.
    pub value: String,
    /// Whether scripts are kept from it.
    pub http_only: bool,
    /// `Strict`, `Lax` or `None`, when set.
    pub same_site: Option<String>,
    /// The path it is sent for.
    pub path: Option<String>,
}

/// A headless Chromium session and the chromedriver process behind it.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    /// Holds the Chromium profile and the driver's log; removed on drop.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session.
    pub fn start() -> Result<Browser, BrowserError> {
        let driver_path = locate_driver()?;
        let chromium = locate_chromium()?;
        let dir = tempfile::tempdir().map_err(|e| BrowserError::Start(e.to_string()))?;
        let log_path = dir.path().join("chromedriver.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| BrowserError::Start(e.to_string()))?;
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| BrowserError::Start(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                BrowserError::Start(format!("cannot run {}: {e}", driver_path.display()))
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BrowserError::Start(e.to_string()))?;
        // Owned from here on, so a failure below still kills the driver and removes the folder.
        let mut browser = Browser { runtime, client: None, driver, dir };
        let addr = format!("127.0.0.1:{port}");
        // It listens once it is ready for sessions (its `/status` keeps connections open, which
        // the tests' raw client, reading to the end, would wait out).
        let listening = eventually(START_LIMIT, || std::net::TcpStream::connect(&addr).is_ok());
        if !listening {
            return Err(browser.start_error("chromedriver did not listen"));
        }
        let profile = browser.dir.path().join("profile");
        let capabilities: Capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        let session = browser.runtime.block_on(async {
            tokio::time::timeout(
                START_LIMIT,
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://{addr}")),
            )
            .await
        });
        match session {
            Ok(Ok(client)) => {
                browser.client = Some(client);
                Ok(browser)
            }
            Ok(Err(e)) => Err(browser.start_error(&format!("no session: {e}"))),
            Err(_) => Err(browser.start_error("no session within the time limit")),
        }
    }

    fn start_error(&self, why: &str) -> BrowserError {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        BrowserError::Start(format!("{why}; chromedriver's log:\n{log}"))
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open until drop")
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        let client = self.client();
        if let Err(e) = self.runtime.block_on(client.goto(url)) {
            panic!("cannot open {url}: {e}");
        }
    }

    /// The address of the page shown.
    pub fn url(&self) -> String {
        self.runtime
            .block_on(self.client().current_url())
            .map(|u| u.to_string())
            .unwrap_or_else(|e| panic!("cannot read the current URL: {e}"))
    }

    /// The HTML of the page shown.
    pub fn source(&self) -> String {
        self.runtime
            .block_on(self.client().source())
            .unwrap_or_else(|e| panic!("cannot read the page source: {e}"))
    }

    /// The visible text of the first element matching `css`, trimmed; `None` when there is none.
    pub fn text(&self, css: &str) -> Option<String> {
        let client = self.client();
        self.runtime.block_on(async {
            let element = client.find(Locator::Css(css)).await.ok()?;
            element.text().await.ok().map(|t| t.trim().to_owned())
        })
    }

    /// The texts of every element matching `css`, trimmed.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let client = self.client();
        self.runtime.block_on(async {
            let mut texts = Vec::new();
            for element in client.find_all(Locator::Css(css)).await.unwrap_or_default() {
                if let Ok(text) = element.text().await {
                    texts.push(text.trim().to_owned());
                }
            }
            texts
        })
    }

    /// An attribute of the first element matching `css`; `None` when there is no such element
    /// or attribute.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let client = self.client();
        self.runtime.block_on(async {
            client.find(Locator::Css(css)).await.ok()?.attr(name).await.ok().flatten()
        })
    }

    /// Waits until an element matches `css`; fails the test after [`PATIENCE`].
    pub fn wait_for(&self, css: &str) {
        let found = eventually(PATIENCE, || self.text(css).is_some());
        assert!(
            found,
            "no element {css:?} on {} after {PATIENCE:?}:\n{}",
            self.url(),
            self.source()
        );
    }

    /// Waits until the text of the first element matching `css` satisfies `pred`, and returns
    /// it; fails the test (showing the last text and the page) after [`PATIENCE`].
    pub fn wait_text(&self, css: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut last = None;
        let ok = eventually(PATIENCE, || {
            last = self.text(css);
            last.as_deref().is_some_and(&pred)
        });
        assert!(
            ok,
            "the text of {css:?} on {} stayed {last:?} for {PATIENCE:?}:\n{}",
            self.url(),
            self.source()
        );
        last.unwrap_or_default()
    }

    /// Clicks the first element matching `css`, waiting for it to appear. A click that fails
    /// because the element was just replaced (htmx swaps parts of a page) is tried again.
    pub fn click(&self, css: &str) {
        let client = self.client();
        let mut last_error = String::from("never found");
        let clicked = eventually(PATIENCE, || {
            self.runtime.block_on(async {
                let element = match client.find(Locator::Css(css)).await {
                    Ok(element) => element,
                    Err(e) => {
                        last_error = e.to_string();
                        return false;
                    }
                };
                match element.click().await {
                    Ok(()) => true,
                    Err(e) => {
                        last_error = e.to_string();
                        false
                    }
                }
            })
        });
        assert!(clicked, "cannot click {css:?} on {}: {last_error}\n{}", self.url(), self.source());
    }

    /// Types `text` into the first element matching `css` (a form field), waiting for it.
    pub fn type_into(&self, css: &str, text: &str) {
        let client = self.client();
        let mut last_error = String::from("never found");
        let typed = eventually(PATIENCE, || {
            self.runtime.block_on(async {
                let result = async {
                    let element = client.find(Locator::Css(css)).await?;
                    element.clear().await?;
                    element.send_keys(text).await
                };
                match result.await {
                    Ok(()) => true,
                    Err(e) => {
                        last_error = e.to_string();
                        false
                    }
                }
            })
        });
        assert!(typed, "cannot type into {css:?} on {}: {last_error}", self.url());
    }

    /// Runs `script` in the page (a function body: `return ...` gives the answer).
    pub fn script(&self, script: &str) -> serde_json::Value {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .unwrap_or_else(|e| panic!("cannot run a script on {}: {e}", self.url()))
    }

    /// The browser's cookie `name` for the page shown, as the browser keeps it (with the
    /// attributes that scripts cannot see, such as `HttpOnly`); `None` when it has none.
    pub fn cookie(&self, name: &str) -> Option<Cookie> {
        let cookie = self.runtime.block_on(self.client().get_named_cookie(name)).ok()?;
        Some(Cookie {
            value: cookie.value().to_owned(),
            http_only: cookie.http_only().unwrap_or(false),
            same_site: cookie.same_site().map(|s| s.to_string()),
            path: cookie.path().map(str::to_owned),
        })
    }

    /// Waits until the page's address satisfies `pred` (after a click that navigates), and
    /// returns it.
    pub fn wait_url(&self, pred: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = eventually(PATIENCE, || {
            last = self
                .runtime
                .block_on(self.client().current_url())
                .map(|u| u.to_string())
                .unwrap_or_default();
            pred(&last)
        });
        assert!(ok, "the page stayed at {last} for {PATIENCE:?}");
        last
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("cannot take a screenshot: {e}"));
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Saves a screenshot as `name` in `$B24_SCREENSHOTS_DIR` when that is set (relative to the
    /// workspace root); returns where it went.
    pub fn screenshot_if_asked(&self, name: &str) -> Option<PathBuf> {
        let dir = std::env::var_os(SCREENSHOTS_ENV)?;
        let dir = crate::workspace_root().join(dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        let path = dir.join(name);
        self.screenshot(&path);
        Some(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver quit Chromium; then the driver goes.
        if let Some(client) = self.client.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(START_LIMIT, client.close()).await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
