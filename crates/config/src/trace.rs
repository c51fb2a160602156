//! The trace-export settings both daemons share: `--otlp-endpoint` and `--trace-sample-ratio`
//! (flags, `RAGMESH_*` variables, file keys `otlp_endpoint` and `trace_sample_ratio`). When
//! they are unset, the standard `OTEL_*` variables decide (ragmesh-telemetry merges them).

use clap::Args;

use crate::errors::Problems;

/// Trace-export flags, flattened into both daemons' command lines.
#[derive(Debug, Clone, Default, Args)]
pub struct TraceArgs {
    /// Export spans over OTLP/gRPC to this collector, e.g. http://jaeger:4317 (Jaeger, an
    /// OpenTelemetry Collector). Off by default; OTEL_EXPORTER_OTLP_ENDPOINT applies when unset
    #[arg(long, env = "RAGMESH_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces exported, 0 to 1; a caller's sampled traceparent is always
    /// followed. OTEL_TRACES_SAMPLER_ARG applies when unset [default: 1.0]
    #[arg(long, env = "RAGMESH_TRACE_SAMPLE_RATIO", value_name = "F")]
    pub trace_sample_ratio: Option<f64>,
}

/// Validated trace-export settings; `None` fields leave the `OTEL_*` variables to decide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceConfig {
    /// Collector endpoint, `http://` or `https://`.
    pub otlp_endpoint: Option<String>,
    /// Sampling ratio of new traces, within 0..=1.
    pub sample_ratio: Option<f64>,
}

impl TraceArgs {
    /// Flags over the file's `otlp_endpoint` and `trace_sample_ratio`, validated.
    pub(crate) fn resolve(
        self,
        file_endpoint: Option<String>,
        file_ratio: Option<f64>,
        problems: &mut Problems,
    ) -> TraceConfig {
        let otlp_endpoint = self.otlp_endpoint.or(file_endpoint).filter(|e| !e.is_empty());
        if let Some(endpoint) = &otlp_endpoint {
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            let host = endpoint.split_once("://").map_or("", |(_, rest)| rest);
            if !scheme_ok || host.is_empty() || endpoint.contains(char::is_whitespace) {
                problems.push(format!(
                    "--otlp-endpoint {endpoint:?} is not a collector URL: write it with its scheme, e.g. http://jaeger:4317"
                ));
            }
        }
        let sample_ratio = self.trace_sample_ratio.or(file_ratio);
        if let Some(ratio) = sample_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            problems
                .push(format!("--trace-sample-ratio {ratio} is out of range: use a fraction from 0 to 1, e.g. 0.1"));
        }
        TraceConfig { otlp_endpoint, sample_ratio }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: TraceArgs, file: (Option<&str>, Option<f64>)) -> Result<TraceConfig, Vec<String>> {
        let mut problems = Problems::default();
        let config = args.resolve(file.0.map(str::to_owned), file.1, &mut problems);
        problems.finish(config).map_err(|errors| errors.to_string().lines().map(str::to_owned).collect())
    }

    #[test]
    fn off_by_default_and_flags_win_over_the_file() {
        assert_eq!(resolve(TraceArgs::default(), (None, None)), Ok(TraceConfig::default()));
        let flags = TraceArgs { otlp_endpoint: Some("http://jaeger:4317".into()), trace_sample_ratio: Some(0.5) };
        let config = resolve(flags, (Some("http://file:4317"), Some(0.1))).expect("valid");
        assert_eq!(config.otlp_endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(config.sample_ratio, Some(0.5));
        let config = resolve(TraceArgs::default(), (Some("https://file:4317"), Some(0.1))).expect("valid");
        assert_eq!((config.otlp_endpoint.as_deref(), config.sample_ratio), (Some("https://file:4317"), Some(0.1)));
    }

    #[test]
    fn both_daemons_document_the_flags_and_their_variables() {
        use clap::CommandFactory as _;
        let helps = [
            crate::MasterArgs::command().render_long_help().to_string(),
            crate::AgentArgs::command().render_long_help().to_string(),
        ];
        for help in helps {
            for needle in [
                "--otlp-endpoint <URL>",
                "--trace-sample-ratio <F>",
                "RAGMESH_OTLP_ENDPOINT",
                "RAGMESH_TRACE_SAMPLE_RATIO",
            ] {
                assert!(help.contains(needle), "{needle} missing from:\n{help}");
            }
        }
    }

    #[test]
    fn the_file_keys_reach_the_process_config() {
        use clap::Parser as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "otlp_endpoint = \"http://jaeger:4317\"\ntrace_sample_ratio = 0.25\n").expect("write");
        let args = ["ragmesh-agent", "--insecure", "--name", "n1", "--master", "m:7400", "--config"];
        let args = crate::AgentArgs::try_parse_from(args.iter().copied().chain([file.to_str().expect("utf-8")]))
            .expect("parse");
        let (_config, process) = args.resolve_daemon().expect("valid");
        assert_eq!(process.trace.otlp_endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(process.trace.sample_ratio, Some(0.25));
    }

    #[test]
    fn a_ratio_outside_0_1_and_an_endpoint_without_scheme_are_refused() {
        for ratio in [-0.1, 1.5, f64::NAN] {
            let args = TraceArgs { trace_sample_ratio: Some(ratio), ..TraceArgs::default() };
            let errors = resolve(args, (None, None)).expect_err("out of range");
            assert!(errors.iter().any(|e| e.contains("--trace-sample-ratio")), "{errors:?}");
        }
        for endpoint in ["jaeger:4317", "http://", "ftp://x:1", "http://bad host:4317"] {
            let args = TraceArgs { otlp_endpoint: Some(endpoint.into()), ..TraceArgs::default() };
            let errors = resolve(args, (None, None)).expect_err("no scheme");
            assert!(errors.iter().any(|e| e.contains("--otlp-endpoint")), "{endpoint}: {errors:?}");
        }
    }
}
