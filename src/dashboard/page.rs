//! The page: HTML rendered on the server from a [`Snapshot`], with inline SVG charts and
//! no script, so that it needs no build step, no network and no JavaScript engine to
//! draw; `<meta http-equiv="refresh">` reloads it.

use std::fmt::Write as _;

use super::snapshot::{CellPoint, Snapshot, HISTORY_MINUTES};
use super::REFRESH_SECS;
use crate::ledger::Minute;
use crate::progress::human_secs;

/// Chart size in SVG user units; the SVG scales to the page's width.
const CHART_W: f64 = 600.0;
const CHART_H: f64 = 140.0;

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.alert{background:#fde8e8;border-left:4px solid #c62828;padding:.4em .8em;margin:.3em 0}\
.ok{color:#2e7d32}.bar{background:#eee;width:12em;height:.9em;display:inline-block}\
.bar span{background:#1976d2;height:100%;display:block}\
.charts{display:flex;flex-wrap:wrap;gap:2em}.chart{width:40em;max-width:100%}\
svg{width:100%;height:auto;background:#fafafa}";

/// Escapes text for HTML content and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page. `link_query` is appended to links (`?token=…` when a token guards
/// the dashboard).
pub fn render(s: &Snapshot, link_query: &str) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let farm = escape(&s.status.farm);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>cellfarm {farm}</title><style>{STYLE}</style></head><body>\
         <h1>cellfarm <b>{farm}</b></h1><p>{} UTC · refreshes every {REFRESH_SECS} s · \
         <a href=\"/api/snapshot{link_query}\">JSON</a> · <a href=\"/metrics{link_query}\">metrics</a></p>",
        chrono::DateTime::from_timestamp(s.at, 0).map_or(String::new(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
    );
    alerts(&mut h, s);
    pools(&mut h, s);
    charts(&mut h, s);
    running(&mut h, s);
    failures(&mut h, s, link_query);
    interruptions(&mut h, s);
    spend(&mut h, s);
    h.push_str("</body></html>\n");
    h
}

fn alerts(h: &mut String, s: &Snapshot) {
    h.push_str("<section id=\"alerts\"><h2>Alerts</h2>");
    if s.status.alerts.is_empty() {
        h.push_str("<p class=\"ok\">none</p>");
    }
    for a in &s.status.alerts {
        let _ = write!(
            h,
            "<div class=\"alert\"><b>{}</b> {}: {}</div>",
            a.kind,
            escape(&a.subject),
            escape(&a.message)
        );
    }
    h.push_str("</section>");
}

fn pools(h: &mut String, s: &Snapshot) {
    h.push_str(
        "<section id=\"pools\"><h2>Pools</h2><table><tr><th>pool</th><th>ready</th>\
         <th>queued</th><th>running</th><th>work left</th><th>ETA</th><th>cells alive</th>\
         <th>pending</th><th>ceiling</th><th>spent today</th></tr>",
    );
    for p in &s.pools {
        let progress = s.status.progress.iter().find(|x| x.pool == p.pool);
        let cost = s.status.pools.iter().find(|x| x.pool == p.pool);
        let (queued, running, left, eta) = progress.map_or((0, 0, 0.0, None), |x| {
            (x.queued, x.running, x.remaining_work_secs, x.eta_secs)
        });
        let spent = cost
            .and_then(|c| c.spent_today_usd)
            .map_or("-".into(), |v| format!("${v:.2}"));
        let budget = cost
            .and_then(|c| c.budget_per_day_usd)
            .map_or(String::new(), |b| format!(" of ${b:.2}"));
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{queued}</td>\
             <td class=\"n\">{running}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{spent}{budget}</td></tr>",
            escape(&p.pool),
            p.ready,
            human_secs(left),
            eta.map_or("-".into(), human_secs),
            p.alive,
            p.pending,
            cost.map_or(0, |c| c.ceiling),
        );
    }
    h.push_str("</table></section>");
}

fn charts(h: &mut String, s: &Snapshot) {
    let (ok, failed) = s
        .minutes
        .iter()
        .fold((0, 0), |(o, f), m| (o + m.succeeded, f + m.failed));
    let rate = if ok + failed > 0 {
        format!("{:.1}%", 100.0 * failed as f64 / (ok + failed) as f64)
    } else {
        "-".into()
    };
    let _ = write!(
        h,
        "<section id=\"charts\" class=\"charts\"><div class=\"chart\"><h2>Jobs per minute \
         (last {HISTORY_MINUTES} min: {ok} succeeded, {failed} failed, failure rate {rate})</h2>{}</div>\
         <div class=\"chart\"><h2>Cells requested and alive</h2>{}</div></section>",
        jobs_chart(&s.minutes, s.at),
        cells_chart(&s.cells)
    );
}

/// Stacked bars a minute: succeeded (blue) under failed (red).
pub fn jobs_chart(minutes: &[Minute], now: i64) -> String {
    let start = now - now.rem_euclid(60) - (HISTORY_MINUTES - 1) * 60;
    let most = minutes
        .iter()
        .map(|m| m.succeeded + m.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = CHART_W / HISTORY_MINUTES as f64;
    let mut svg = svg_open("jobs-chart", &format!("most {most:.0} a minute"));
    for m in minutes {
        let i = (m.at - start) / 60;
        if !(0..HISTORY_MINUTES).contains(&i) {
            continue;
        }
        let x = i as f64 * slot;
        let ok_h = CHART_H * m.succeeded as f64 / most;
        let failed_h = CHART_H * m.failed as f64 / most;
        let _ = write!(
            svg,
            "<rect class=\"ok\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{ok_h:.1}\" fill=\"#1976d2\"/>\
             <rect class=\"failed\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{failed_h:.1}\" fill=\"#c62828\"/>",
            CHART_H - ok_h,
            slot * 0.8,
            CHART_H - ok_h - failed_h,
            slot * 0.8
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Two step lines: requested (grey) and alive (green).
pub fn cells_chart(points: &[CellPoint]) -> String {
    let most = points
        .iter()
        .map(|p| p.requested.max(p.alive))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut svg = svg_open("cells-chart", &format!("most {most:.0} cells"));
    let n = points.len().max(2) - 1;
    for (class, colour, value) in [
        (
            "requested",
            "#9e9e9e",
            (|p: &CellPoint| p.requested) as fn(&CellPoint) -> u64,
        ),
        ("alive", "#2e7d32", |p: &CellPoint| p.alive),
    ] {
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let x = CHART_W * i as f64 / n as f64;
                let y = CHART_H - (CHART_H - 4.0) * value(p) as f64 / most;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline class=\"{class}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

fn svg_open(id: &str, scale: &str) -> String {
    format!(
        "<svg id=\"{id}\" viewBox=\"0 0 {CHART_W} {CHART_H}\" role=\"img\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>{scale}</title>\
         <text x=\"4\" y=\"12\" font-size=\"10\" fill=\"#666\">{scale}</text>"
    )
}

fn running(h: &mut String, s: &Snapshot) {
    h.push_str(
        "<section id=\"running\"><h2>Running jobs</h2><table><tr><th>job</th><th>pipeline</th>\
         <th>progress</th><th>speed</th><th>ETA</th><th>cell</th></tr>",
    );
    for j in &s.status.running {
        let pct = 100.0 * j.job.fraction;
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><span class=\"bar\"><span style=\"width:{pct:.0}%\"></span></span> {pct:.0}%</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&j.job.job_id),
            escape(&j.job.pipeline),
            j.job.speed.map_or("-".into(), |v| format!("{v:.2}x")),
            j.eta_secs.map_or("-".into(), human_secs),
            escape(&j.cell_id)
        );
    }
    h.push_str("</table></section>");
}

fn failures(h: &mut String, s: &Snapshot, link_query: &str) {
    h.push_str(
        "<section id=\"failures\"><h2>Recent failures</h2><table><tr><th>when</th><th>job</th>\
         <th>source</th><th>state</th><th>reason</th></tr>",
    );
    for f in &s.status.failures {
        let id = escape(&f.job_id);
        let _ = write!(
            h,
            "<tr><td>{}</td><td><a href=\"/api/jobs/{id}{link_query}\">{id}</a></td><td>{}</td>\
             <td>{} after {}</td><td>{}</td></tr>",
            f.at.format("%H:%M:%S"),
            escape(&f.source),
            f.state,
            f.attempts,
            escape(&f.error)
        );
    }
    h.push_str("</table></section>");
}

fn interruptions(h: &mut String, s: &Snapshot) {
    h.push_str(
        "<section id=\"interruptions\"><h2>Spot interruptions</h2><table><tr><th>instance type</th>\
         <th>AZ</th><th>interruptions</th><th>work lost</th></tr>",
    );
    for i in &s.interruptions {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(i.instance_type.as_deref().unwrap_or("unknown")),
            escape(i.az.as_deref().unwrap_or("unknown")),
            i.interruptions,
            human_secs(i.lost_work_secs)
        );
    }
    h.push_str("</table></section>");
}

fn spend(h: &mut String, s: &Snapshot) {
    h.push_str(
        "<section id=\"spend\"><h2>Spend</h2><table><tr><th></th><th>instance time</th>\
         <th>spent</th><th>on demand would be</th><th>saved</th></tr>",
    );
    for (label, b) in [
        ("today (UTC)", &s.spend_today),
        ("farm's life", &s.spend_life),
    ] {
        let _ = write!(
            h,
            "<tr><td>{label}</td><td class=\"n\">{}</td><td class=\"n\">${:.2}</td>\
             <td class=\"n\">${:.2}</td><td class=\"n\">${:.2}</td></tr>",
            human_secs(b.instance_secs as f64),
            b.spend_usd,
            b.on_demand_usd,
            b.savings_usd
        );
    }
    h.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">O'Neil & co</a>"),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; co&lt;/a&gt;"
        );
    }

    #[test]
    fn charts_scale_to_their_largest_value() {
        let now = 3600 * 10;
        let minutes = [Minute {
            at: now - 60,
            succeeded: 3,
            failed: 1,
        }];
        let svg = jobs_chart(&minutes, now);
        assert!(svg.contains("height=\"105.0\""), "3 of 4: {svg}");
        assert!(svg.contains("height=\"35.0\""), "1 of 4: {svg}");
        let points = [
            CellPoint {
                at: 0,
                requested: 2,
                alive: 1,
            },
            CellPoint {
                at: 60,
                requested: 2,
                alive: 2,
            },
        ];
        let svg = cells_chart(&points);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("600.0,4.0"), "{svg}");
    }
}
