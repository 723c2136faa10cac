//! A loopback EC2 endpoint that refuses capacity: it forwards the EC2 query API to
//! moto_server (`CELLFARM_TEST_EC2`), records every request's Action and form
//! parameters, and for the instance types it is told to refuse in one market (spot or
//! on-demand) answers the way EC2 does when it has no capacity (or, with
//! [`Ec2Proxy::deny`], when the caller may not launch them: the same shapes with
//! `UnauthorizedOperation`, HTTP 403 for RunInstances):
//!
//! - RunInstances: HTTP 500 with the error code `InsufficientInstanceCapacity` (a server
//!   error in EC2's error list), nothing launched;
//! - CreateFleet `instant`: HTTP 200 with one `errorSet` item per refused override
//!   (its launch template and overrides, `lifecycle`, `errorCode`, `errorMessage`).
//!   The overrides left are forwarded to moto as the request's only choices, so the
//!   instances come from them; when every override is refused the answer has no
//!   instances at all.
//!
//! Requests are handled whole (see [`super::http`]): the body is decoded, possibly
//! rewritten, and sent to moto on a connection of its own with the client's headers,
//! so the client's signature headers reach moto unchanged (moto does not check them).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::http::{self, Request, Response};

/// What the AWS SDKs leave unescaped in a query-protocol body (RFC 3986 unreserved).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

const OVERRIDES: &str = "LaunchTemplateConfigs.1.Overrides.";

/// Which capacity a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Market {
    Spot,
    OnDemand,
}

impl Market {
    /// EC2's name for it in `lifecycle` and `DefaultTargetCapacityType`.
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        }
    }
}

/// One request as the proxy received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub action: String,
    /// The form parameters, decoded.
    pub params: BTreeMap<String, String>,
    /// The instance types the proxy refused in it (all of them for a refused
    /// RunInstances; the refused overrides of a CreateFleet).
    pub refused: Vec<String>,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The market asked for: CreateFleet's `DefaultTargetCapacityType`, RunInstances'
    /// `InstanceMarketOptions.MarketType` (none means on-demand).
    pub fn market(&self) -> Market {
        let spot = match self.action.as_str() {
            "CreateFleet" => {
                self.param("TargetCapacitySpecification.DefaultTargetCapacityType") == Some("spot")
            }
            _ => self.param("InstanceMarketOptions.MarketType") == Some("spot"),
        };
        if spot {
            Market::Spot
        } else {
            Market::OnDemand
        }
    }

    /// The instance types offered: RunInstances' one, CreateFleet's overrides in order.
    pub fn instance_types(&self) -> Vec<String> {
        match self.action.as_str() {
            "CreateFleet" => overrides(&self.params)
                .into_iter()
                .filter_map(|o| o.get("InstanceType").cloned())
                .collect(),
            _ => self
                .param("InstanceType")
                .map(String::from)
                .into_iter()
                .collect(),
        }
    }
}

/// EC2's capacity refusal code.
const NO_CAPACITY: &str = "InsufficientInstanceCapacity";
/// EC2's code for a caller without the permission.
pub const UNAUTHORIZED: &str = "UnauthorizedOperation";

#[derive(Default)]
struct State {
    /// Refused (market, type), with the error code to refuse it with.
    refused: BTreeMap<(Market, String), &'static str>,
    /// Actions answered only after this long.
    held: BTreeMap<String, Duration>,
    recorded: Vec<Recorded>,
}

/// The proxy: it runs until the test process ends.
pub struct Ec2Proxy {
    /// `http://127.0.0.1:port`, for `cloud.ec2.endpoint`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Ec2Proxy {
    /// Starts a proxy in front of `CELLFARM_TEST_EC2` that refuses nothing yet.
    pub fn start() -> Ec2Proxy {
        let upstream = super::env("CELLFARM_TEST_EC2", "http://127.0.0.1:5000");
        let upstream = upstream
            .strip_prefix("http://")
            .expect("CELLFARM_TEST_EC2 is an http:// URL")
            .trim_end_matches('/')
            .to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let url = http::serve(move |r| handle(r, &upstream, &shared));
        Ec2Proxy { url, state }
    }

    /// From now on, refuses `types` in `market` for lack of capacity.
    pub fn refuse(&self, market: Market, types: &[&str]) {
        self.refuse_with(market, types, NO_CAPACITY);
    }

    /// From now on, refuses `types` in `market` as not authorised
    /// (`UnauthorizedOperation`).
    pub fn deny(&self, market: Market, types: &[&str]) {
        self.refuse_with(market, types, UNAUTHORIZED);
    }

    fn refuse_with(&self, market: Market, types: &[&str], code: &'static str) {
        let mut state = self.state.lock().expect("never poisoned");
        state
            .refused
            .extend(types.iter().map(|t| ((market, t.to_string()), code)));
    }

    /// From now on, answers `action` only after `delay` (moto still carries it out).
    pub fn hold(&self, action: &str, delay: Duration) {
        let mut state = self.state.lock().expect("never poisoned");
        state.held.insert(action.to_string(), delay);
    }

    /// Every request so far, in arrival order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().expect("never poisoned").recorded.clone()
    }

    /// The recorded launches (CreateFleet and RunInstances), in arrival order.
    pub fn launches(&self) -> Vec<Recorded> {
        self.recorded()
            .into_iter()
            .filter(|r| r.action == "CreateFleet" || r.action == "RunInstances")
            .collect()
    }
}

fn handle(request: Request, upstream: &str, state: &Mutex<State>) -> Response {
    let params = decode(&String::from_utf8_lossy(&request.body));
    let action = params.get("Action").cloned().unwrap_or_default();
    let mut record = Recorded {
        action: action.clone(),
        params: params.clone(),
        refused: Vec::new(),
    };
    let refused = |market: Market, t: &str| {
        let state = state.lock().expect("never poisoned");
        state.refused.get(&(market, t.to_string())).copied()
    };
    let held = state
        .lock()
        .expect("never poisoned")
        .held
        .get(&action)
        .copied();
    if let Some(delay) = held {
        std::thread::sleep(delay);
    }
    let market = record.market();
    let response = match action.as_str() {
        "RunInstances" => {
            let t = record.param("InstanceType").unwrap_or_default().to_string();
            if let Some(code) = refused(market, &t) {
                record.refused.push(t.clone());
                run_refused(&t, code)
            } else {
                forward(&request, &request.body, upstream)
            }
        }
        "CreateFleet" => {
            let mut no = Vec::new();
            let mut yes = Vec::new();
            for o in overrides(&params) {
                match o.get("InstanceType").and_then(|t| refused(market, t)) {
                    Some(code) => no.push((o, code)),
                    None => yes.push(o),
                }
            }
            record.refused = no
                .iter()
                .filter_map(|(o, _)| o.get("InstanceType").cloned())
                .collect();
            fleet(&request, &params, market, &no, &yes, upstream)
        }
        _ => forward(&request, &request.body, upstream),
    };
    state.lock().expect("never poisoned").recorded.push(record);
    response
}

/// A CreateFleet with `no` refused (each with its error code) and `yes` left:
/// forwarded with `yes` only, the refusals added to moto's answer; or, with nothing
/// left, answered here.
fn fleet(
    request: &Request,
    params: &BTreeMap<String, String>,
    market: Market,
    no: &[(BTreeMap<String, String>, &str)],
    yes: &[BTreeMap<String, String>],
    upstream: &str,
) -> Response {
    if no.is_empty() {
        return forward(request, &request.body, upstream);
    }
    let template = params
        .iter()
        .filter_map(|(k, v)| {
            let field = k.strip_prefix("LaunchTemplateConfigs.1.LaunchTemplateSpecification.")?;
            Some(format!(
                "<{}>{v}</{}>",
                lower_first(field),
                lower_first(field)
            ))
        })
        .collect::<String>();
    let errors: String = no
        .iter()
        .map(|(o, code)| {
            let fields: String = o
                .iter()
                .map(|(k, v)| format!("<{}>{v}</{}>", lower_first(k), lower_first(k)))
                .collect();
            format!(
                "<item><launchTemplateAndOverrides><launchTemplateSpecification>{template}\
                 </launchTemplateSpecification><overrides>{fields}</overrides>\
                 </launchTemplateAndOverrides><lifecycle>{}</lifecycle>\
                 <errorCode>{code}</errorCode><errorMessage>{}\
                 </errorMessage></item>",
                market.as_str(),
                message(
                    code,
                    market,
                    o.get("InstanceType").map_or("", String::as_str)
                ),
            )
        })
        .collect();
    let error_set = format!("<errorSet>{errors}</errorSet>");
    if yes.is_empty() {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <CreateFleetResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>ec2-proxy-{}</requestId><fleetId>fleet-{:017x}</fleetId>\
             {error_set}<fleetInstanceSet/></CreateFleetResponse>",
            rand::random::<u32>(),
            rand::random::<u64>() >> 4,
        );
        return Response::new("200 OK", body).header("content-type", "text/xml");
    }
    let mut left: BTreeMap<String, String> = params
        .iter()
        .filter(|(k, _)| !k.starts_with(OVERRIDES))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (i, o) in yes.iter().enumerate() {
        for (k, v) in o {
            left.insert(format!("{OVERRIDES}{}.{k}", i + 1), v.clone());
        }
    }
    let mut response = forward(request, encode(&left).as_bytes(), upstream);
    if response.status.starts_with("200") {
        let body = String::from_utf8_lossy(&response.body);
        let closing = "</CreateFleetResponse>";
        // The SDK keeps the last `errorSet` it reads, so moto's own (empty) one, if
        // any, is superseded.
        response.body = match body.rfind(closing) {
            Some(at) => format!("{}{error_set}{}", &body[..at], &body[at..]).into_bytes(),
            None => response.body,
        };
    }
    response
}

/// EC2's messages for a refusal with `code`.
fn message(code: &str, market: Market, instance_type: &str) -> String {
    match (code, market) {
        (UNAUTHORIZED, _) => "You are not authorized to perform this operation.".into(),
        (_, Market::Spot) => {
            "There is no Spot capacity available that matches your request.".into()
        }
        (_, Market::OnDemand) => format!(
            "We currently do not have sufficient {instance_type} capacity in the \
             Availability Zone you requested."
        ),
    }
}

fn run_refused(instance_type: &str, code: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <Response><Errors><Error><Code>{code}</Code>\
         <Message>{}</Message></Error></Errors>\
         <RequestID>ec2-proxy-{}</RequestID></Response>",
        message(code, Market::Spot, instance_type),
        rand::random::<u32>()
    );
    let status = if code == UNAUTHORIZED {
        "403 Forbidden"
    } else {
        "500 Internal Server Error"
    };
    Response::new(status, body).header("content-type", "text/xml")
}

/// The overrides of a CreateFleet's first launch template config, in order, each as
/// its fields (`InstanceType`, `SubnetId`, …).
fn overrides(params: &BTreeMap<String, String>) -> Vec<BTreeMap<String, String>> {
    let mut by_index: BTreeMap<u32, BTreeMap<String, String>> = BTreeMap::new();
    for (k, v) in params {
        let Some(rest) = k.strip_prefix(OVERRIDES) else {
            continue;
        };
        let Some((i, field)) = rest.split_once('.') else {
            continue;
        };
        if let Ok(i) = i.parse() {
            by_index
                .entry(i)
                .or_default()
                .insert(field.to_string(), v.clone());
        }
    }
    by_index.into_values().collect()
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_ascii_lowercase().to_string() + chars.as_str()
    })
}

fn decode(body: &str) -> BTreeMap<String, String> {
    let part = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (part(k), part(v))
        })
        .collect()
}

/// A query-protocol body of `params`, encoded as the AWS SDKs do.
pub fn encode<'a>(params: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    params
        .into_iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, FORM),
                utf8_percent_encode(v, FORM)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Sends `request` with `body` to moto on a connection of its own and returns moto's
/// answer.
fn forward(request: &Request, body: &[u8], upstream: &str) -> Response {
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.path);
    for (k, v) in &request.headers {
        if !matches!(
            k.as_str(),
            "content-length" | "connection" | "transfer-encoding" | "expect"
        ) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut server = TcpStream::connect(upstream).expect("moto_server (scripts/services.sh)");
    server.write_all(head.as_bytes()).expect("send to moto");
    server.write_all(body).expect("send to moto");
    let mut raw = Vec::new();
    server.read_to_end(&mut raw).expect("moto's answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response from moto");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")),
        "moto answered chunked; the proxy reads whole bodies only"
    );
    let mut response = Response::new(status(&code), raw[split + 4..].to_vec());
    for (k, v) in headers {
        if k == "content-type" || k.starts_with("x-amz") {
            response = response.header(&k, &v);
        }
    }
    response
}

/// The status lines moto answers with.
fn status(code: &str) -> &'static str {
    match code {
        "200" => "200 OK",
        "400" => "400 Bad Request",
        "401" => "401 Unauthorized",
        "403" => "403 Forbidden",
        "404" => "404 Not Found",
        "500" => "500 Internal Server Error",
        "503" => "503 Service Unavailable",
        _ => "502 Bad Gateway",
    }
}
