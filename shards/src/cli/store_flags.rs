//! The object-store flags every program takes, with the same names and variables
//! everywhere, resolved once into [`StoreOptions`].

use std::time::Duration;

use clap::builder::FalseyValueParser;

use crate::store::{Retry, StoreOptions};

/// How to reach the object store: flag > environment variable > default. The keys
/// themselves come only from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, a profile or a web identity), never
/// from a flag, so they stay out of shell history and process lists.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Object store (flag > environment > default; keys only from AWS_* variables)")]
pub struct StoreFlags {
    /// S3 endpoint of an S3-compatible server, e.g. http://127.0.0.1:9000 (AWS_ENDPOINT
    /// is read too) [default: AWS's endpoint for the region].
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// S3 region (AWS_DEFAULT_REGION is read too) [default: us-east-1].
    #[arg(long, global = true, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint; an http:// --endpoint-url implies it.
    #[arg(long, global = true, env = "AWS_ALLOW_HTTP", value_parser = FalseyValueParser::new())]
    pub allow_http: bool,
    /// Retries of a failed store request (5xx, throttling, timeouts, resets) before
    /// the operation fails.
    #[arg(long, global = true, env = "S3_STORE_RETRIES", default_value_t = Retry::default().max_retries, value_name = "N")]
    pub store_retries: usize,
    /// Seconds after the first try of a request when it is no longer retried.
    #[arg(long, global = true, env = "S3_STORE_TIMEOUT", default_value_t = Retry::default().timeout.as_secs(), value_name = "SECONDS")]
    pub store_timeout: u64,
}

impl StoreFlags {
    /// The options these flags (and the variables behind them) ask for.
    pub fn resolve(&self) -> StoreOptions {
        let endpoint = self.endpoint_url.clone().or_else(|| non_empty_var("AWS_ENDPOINT"));
        let plain_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        StoreOptions {
            allow_http: Some(self.allow_http || plain_http),
            endpoint,
            region: self.region.clone(),
            retry: Retry {
                max_retries: self.store_retries,
                timeout: Duration::from_secs(self.store_timeout),
                ..Retry::default()
            },
            ..StoreOptions::default()
        }
    }
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreFlags,
    }

    fn parse(args: &[&str]) -> StoreOptions {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap().store.resolve()
    }

    #[test]
    fn flags_resolve_into_the_options() {
        let o = parse(&["--endpoint-url", "http://127.0.0.1:9", "--store-retries", "2", "--store-timeout", "7"]);
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(o.allow_http, Some(true), "an http:// endpoint is consent to plain HTTP");
        assert_eq!((o.retry.max_retries, o.retry.timeout), (2, Duration::from_secs(7)));
        let o = parse(&["--endpoint-url", "https://s3.example.org", "--region", "eu-west-1"]);
        assert_eq!(o.allow_http, Some(false));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn the_launch_contract_carries_what_differs_from_the_defaults() {
        let o = parse(&["--endpoint-url", "http://10.0.0.5:9000", "--store-retries", "3"]);
        let env = o.contract_env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AWS_ENDPOINT_URL"), Some("http://10.0.0.5:9000"));
        assert_eq!(get("AWS_ALLOW_HTTP"), Some("true"));
        assert_eq!(get("S3_STORE_RETRIES"), Some("3"));
        assert_eq!(get("S3_STORE_TIMEOUT"), None, "a default needs no variable");
        // The same settings come back out of the variables the job gets.
        let mut args = vec!["t".to_string()];
        for (k, v) in &env {
            let flag = match k.as_str() {
                "AWS_ENDPOINT_URL" => "--endpoint-url",
                "AWS_ALLOW_HTTP" => continue,
                "S3_STORE_RETRIES" => "--store-retries",
                other => panic!("unexpected {other}"),
            };
            args.extend([flag.to_string(), v.clone()]);
        }
        let back = Cli::try_parse_from(args).unwrap().store.resolve();
        assert_eq!(back.contract_env(), env);
        assert!(parse(&[]).contract_env().is_empty(), "{:?}", parse(&[]).contract_env());
    }
}
