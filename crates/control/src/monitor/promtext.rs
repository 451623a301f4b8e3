//! Prometheus' text format in: what a proxy's `/stats/prometheus` serves,
//! read into a [`Report`] with plain Envoy stat names (see `stat::untag`).

use super::stat::untag;
use super::{Histogram, Report};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

/// Label names and values, in order.
pub type Labels = Vec<(String, String)>;

/// `{a="x",b="y"}` (escapes `\\`, `\"`, `\n`); returns the labels and the rest.
fn labels(s: &str) -> Result<(Labels, &str), &'static str> {
    let mut out = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((out, r));
        }
        let (key, r) = rest.split_once('=').ok_or("expected =")?;
        let mut chars = r.strip_prefix('"').ok_or("expected a quoted value")?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated value"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated value"),
            }
        };
        out.push((key.trim().to_string(), value));
        rest = &r[end + 2..];
    }
}

/// Every sample of the text, comments and types left out.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason| ParseError { line: i + 1, reason };
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            labels(&line[name_end..]).map_err(err)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let value = rest.split_whitespace().next().ok_or_else(|| err("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        out.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(out)
}

/// The `# TYPE` of each family.
fn types(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect()
}

/// A scrape as a report: counters and gauges by their `# TYPE`, histograms
/// from their `_bucket`, `_sum` and `_count` series.
pub fn to_report(text: &str, node: &str, node_cluster: &str, at_ms: u64) -> Result<Report, ParseError> {
    let types = types(text);
    let mut report = Report {
        node: node.into(),
        node_cluster: node_cluster.into(),
        at_ms,
        source: "scrape".into(),
        ..Default::default()
    };
    let mut hists: BTreeMap<String, Histogram> = BTreeMap::new();
    for s in parse(text)? {
        match types.get(s.name.as_str()).copied() {
            Some("counter") => report.counters.push((untag(&s.name, &s.labels), s.value.max(0.0) as u64)),
            Some("gauge") => report.gauges.push((untag(&s.name, &s.labels), s.value)),
            _ => histogram_sample(&types, &mut hists, s),
        }
    }
    report.histograms = hists.into_iter().collect();
    Ok(report)
}

fn histogram_sample(types: &HashMap<&str, &str>, hists: &mut BTreeMap<String, Histogram>, mut s: Sample) {
    let Some((family, part)) = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| s.name.strip_suffix(suffix).map(|f| (f.to_string(), *suffix)))
    else {
        return;
    };
    if types.get(family.as_str()) != Some(&"histogram") {
        return;
    }
    let le = s.labels.iter().position(|(k, _)| k == "le").map(|i| s.labels.remove(i).1);
    let h = hists.entry(untag(&family, &s.labels)).or_default();
    match (part, le) {
        ("_bucket", Some(le)) => {
            if let Ok(bound) = le.parse::<f64>() {
                if bound.is_finite() {
                    h.bounds.push(bound);
                    h.cumulative.push(s.value.max(0.0) as u64);
                }
            }
        }
        ("_sum", _) => h.sum = s.value,
        ("_count", _) => h.count = s.value.max(0.0) as u64,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envoy_scrape_becomes_plain_stat_names() {
        let text = "# TYPE envoy_cluster_upstream_rq_xx counter\n\
            envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"web\"} 7\n\
            # TYPE envoy_cluster_upstream_rq_active gauge\n\
            envoy_cluster_upstream_rq_active{envoy_cluster_name=\"web\"} 2\n\
            # TYPE envoy_cluster_upstream_rq_time histogram\n\
            envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"web\",le=\"1\"} 3\n\
            envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"web\",le=\"10\"} 5\n\
            envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"web\",le=\"+Inf\"} 6\n\
            envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"web\"} 12.5\n\
            envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"web\"} 6\n";
        let r = to_report(text, "n", "c", 1).expect("parses");
        assert_eq!(r.counters, vec![("cluster.web.upstream_rq_5xx".to_string(), 7)]);
        assert_eq!(r.gauges, vec![("cluster.web.upstream_rq_active".to_string(), 2.0)]);
        let h = &r.histograms[0];
        assert_eq!(h.0, "cluster.web.upstream_rq_time");
        assert_eq!((h.1.bounds.clone(), h.1.cumulative.clone(), h.1.count), (vec![1.0, 10.0], vec![3, 5], 6));
    }

    #[test]
    fn escaped_labels_and_bad_lines() {
        let s = parse("a{x=\"q\\\"uote\"} 1\n").expect("parses");
        assert_eq!(s[0].labels, vec![("x".to_string(), "q\"uote".to_string())]);
        assert!(parse("a{x=\"open} 1\n").is_err());
        assert!(parse("a nope\n").is_err());
    }
}
