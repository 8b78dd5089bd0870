//! `b24-host send`: builds a realistic event exactly as Bitrix24's PHP sender would, and posts
//! it. Used in the quick start, in tests, and to poke a running host by hand.

use std::{
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

use crate::{cli::SendArgs, decode::encode};

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The URL is not an `http://host:port/path` URL.
    #[error("bad --url {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting or talking HTTP failed.
    #[error("cannot post to {url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Prints the body (`--print`) or posts it and prints the answer; fails on a non-2xx status.
pub fn run(args: &SendArgs) -> anyhow::Result<ExitCode> {
    let (body, content_type) = body(args);
    if args.print {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let (status, text) = super::runtime()?.block_on(post(&args.url, body, content_type))?;
    println!("{status} {text}");
    Ok(if (200..300).contains(&status) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The event `args` describe, as the nested payload Bitrix24 would send.
pub fn payload(args: &SendArgs) -> Value {
    let code = args.event.to_ascii_uppercase();
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut auth = Map::new();
    if !args.system {
        let token = args.access_token.as_deref().unwrap_or("s6p6eclrvim6da22ft9ch94ekreb52lv");
        auth.insert("access_token".into(), json!(token));
        auth.insert("expires".into(), json!((ts + 3600).to_string()));
        auth.insert("expires_in".into(), json!("3600"));
        auth.insert("scope".into(), json!("crm"));
    }
    auth.insert("domain".into(), json!(args.domain));
    let server = args.server_endpoint.as_deref().unwrap_or("https://oauth.bitrix.info/rest/");
    auth.insert("server_endpoint".into(), json!(server));
    if !args.system {
        auth.insert("status".into(), json!("F"));
    }
    let client =
        args.client_endpoint.clone().unwrap_or_else(|| format!("https://{}/rest/", args.domain));
    auth.insert("client_endpoint".into(), json!(client));
    auth.insert("member_id".into(), json!(args.member_id));
    if !args.system {
        auth.insert("user_id".into(), json!("1"));
    }
    // Installs and updates carry the installer's pair; other events a user's when given
    // (`ONOFFLINEEVENT`, bot events, business-process calls).
    let refresh = match code.as_str() {
        "ONAPPINSTALL" | "ONAPPUPDATE" => {
            Some(args.refresh_token.as_deref().unwrap_or("4s386p3q0tr8dy89xvmt96234v3dljg8"))
        }
        _ => args.refresh_token.as_deref(),
    };
    if let Some(refresh) = refresh.filter(|_| !args.system) {
        auth.insert("refresh_token".into(), json!(refresh));
    }
    auth.insert("application_token".into(), json!(args.token));

    let data = match code.as_str() {
        "ONAPPINSTALL" => {
            json!({"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"})
        }
        "ONAPPUNINSTALL" => {
            auth.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "domain"
                        | "server_endpoint"
                        | "client_endpoint"
                        | "member_id"
                        | "application_token"
                )
            });
            json!({"LANGUAGE_ID": "en", "CLEAN": "0"})
        }
        _ => json!({"FIELDS": {
            "ID": args.field_id.to_string(),
            "ENTITY_ID": args.entity_id.clone().unwrap_or_else(|| entity_for(&code)),
            "FIELD_NAME": args.field_name,
        }}),
    };
    json!({
        "event": code,
        "event_handler_id": args.handler_id.to_string(),
        "data": data,
        "ts": ts.to_string(),
        "auth": Value::Object(auth),
    })
}

/// The `ENTITY_ID` Bitrix24 sends for a user-field event code.
fn entity_for(code: &str) -> String {
    for family in ["LEAD", "DEAL", "CONTACT", "COMPANY", "QUOTE", "INVOICE", "REQUISITE"] {
        if code.starts_with(&format!("ONCRM{family}USERFIELD")) {
            return format!("CRM_{family}");
        }
    }
    if code.starts_with("ONCRMTYPEUSERFIELD") { "CRM_13".into() } else { "CRM_CONTACT".into() }
}

/// The body and content type for `args`.
pub fn body(args: &SendArgs) -> (String, &'static str) {
    let payload = payload(args);
    if args.json {
        (payload.to_string(), "application/json")
    } else {
        let map = encode::map_from_json(&payload).unwrap_or_default();
        (encode::http_build_query(&map), "application/x-www-form-urlencoded")
    }
}

/// Posts `body` to `url`; returns the status and the answer's text.
pub async fn post(url: &str, body: String, content_type: &str) -> Result<(u16, String), SendError> {
    post_with(url, body, content_type, None).await
}

/// [`post`] with `Authorization: Bearer <bearer>` when given (an admin listener with
/// `admin.token`).
pub async fn post_with(
    url: &str,
    body: String,
    content_type: &str,
    bearer: Option<&str>,
) -> Result<(u16, String), SendError> {
    let uri: Uri =
        url.parse().map_err(|e| SendError::Url { url: url.into(), reason: format!("{e}") })?;
    if uri.scheme_str() != Some("http") {
        return Err(SendError::Url {
            url: url.into(),
            reason: "only http:// URLs are supported".into(),
        });
    }
    let host =
        uri.host().ok_or_else(|| SendError::Url { url: url.into(), reason: "no host".into() })?;
    let port = uri.port_u16().unwrap_or(80);
    let http = |reason: String| SendError::Http { url: url.into(), reason };
    let stream =
        tokio::net::TcpStream::connect((host, port)).await.map_err(|e| http(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.to_owned(), |a| a.to_string());
    let mut request = Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, content_type);
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| http(e.to_string()))?;
    let status = response.status().as_u16();
    let text = response.into_body().collect().await.map_err(|e| http(e.to_string()))?.to_bytes();
    Ok((status, String::from_utf8_lossy(&text).trim_end().to_owned()))
}
