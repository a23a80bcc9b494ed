//! `--config FILE.toml`: a subcommand's options from a TOML file. Its keys are the flags' long
//! names (`noise-dropout` or `noise_dropout`); they take the place of `--config FILE` on the
//! command line, so flags written after it win and each command's one clap `Args` struct serves
//! both. Unknown keys and bad values are errors naming the file, line and key.

use anyhow::{bail, Context, Result};
use clap::error::ContextKind;

/// Where one flag of the expanded command line came from.
#[derive(Debug, Clone)]
struct Origin {
    /// The flag without dashes (`noise-dropout`).
    flag: String,
    /// The key as written in the file (`noise_dropout`).
    key: String,
    /// 1-based line of the key.
    line: usize,
    /// The value as passed to clap (`None` for a `true` switch).
    value: Option<String>,
}

/// A command line with a `--config` file's options in its place.
#[derive(Debug)]
pub struct Expanded {
    /// The arguments to parse.
    pub args: Vec<String>,
    /// The config file and where each of its flags came from.
    file: Option<(String, Vec<Origin>)>,
}

/// A config file is a handful of flags: anything over 1 MiB is refused before it is read.
/// (Deep nesting is refused by the TOML parser's own recursion limit, as a parse error.)
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Replaces `--config FILE` in `args` by the flags the file holds. `cmd` is the whole CLI: the
/// file's keys are checked against the options of the subcommand written before `--config`.
pub fn expand(args: Vec<String>, cmd: &clap::Command) -> Result<Expanded> {
    let Some(i) = args
        .iter()
        .position(|a| a == "--config" || a.starts_with("--config="))
    else {
        return Ok(Expanded { args, file: None });
    };
    let (path, skip) = match args[i].strip_prefix("--config=") {
        Some(p) => (p.to_string(), 1),
        None => (
            args.get(i + 1)
                .cloned()
                .context("--config needs a file path")?,
            2,
        ),
    };
    let size = std::fs::metadata(&path)
        .with_context(|| format!("reading --config {path}"))?
        .len();
    if size > MAX_CONFIG_BYTES {
        bail!("--config {path}: {size} bytes is over the limit of {MAX_CONFIG_BYTES} bytes");
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading --config {path}"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {path} as TOML"))?;

    let (sub_name, sub) = subcommand_before(cmd, &args[1..i]);
    let longs: Vec<String> = sub
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help" | "version"))
        .map(str::to_string)
        .collect();

    let mut flags = Vec::new();
    let mut origins = Vec::new();
    for (key, value) in table {
        let line = line_of(&text, &key);
        let flag = key.replace('_', "-");
        if !longs.contains(&flag) {
            let hint = match closest(&flag, &longs) {
                Some(best) => format!("; the closest valid key is '{best}'"),
                None => String::new(),
            };
            bail!("{path}:{line}: unknown key '{key}' for `{sub_name}`{hint}");
        }
        let value = match value {
            toml::Value::Boolean(true) => None,
            toml::Value::Boolean(false) => continue,
            toml::Value::String(v) => Some(v),
            toml::Value::Integer(v) => Some(v.to_string()),
            toml::Value::Float(v) => Some(v.to_string()),
            other => bail!(
                "{path}:{line}: key '{key}' has a {} value; write a string, number or boolean",
                other.type_str()
            ),
        };
        flags.push(format!("--{flag}"));
        flags.extend(value.clone());
        origins.push(Origin {
            flag,
            key,
            line,
            value,
        });
    }
    let mut out: Vec<String> = args[..i].to_vec();
    out.extend(flags);
    out.extend(args[i + skip..].iter().cloned());
    Ok(Expanded {
        args: out,
        file: Some((path, origins)),
    })
}

impl Expanded {
    /// Parses the expanded command line with `cmd`. A parse error caused by a value from the
    /// config file is returned as an error naming the file, line and key; any other parse
    /// error is clap's own (usage, `--help`).
    pub fn parse(self, cmd: clap::Command) -> Result<clap::ArgMatches, ParseError> {
        let err = match cmd.try_get_matches_from(&self.args) {
            Ok(m) => return Ok(m),
            Err(e) => e,
        };
        let Some((path, origins)) = &self.file else {
            return Err(ParseError::Clap(err));
        };
        let arg = match err.get(ContextKind::InvalidArg) {
            Some(clap::error::ContextValue::String(s)) => s.clone(),
            _ => return Err(ParseError::Clap(err)),
        };
        // "--steps <STEPS>" or "--steps=<STEPS>": the flag's name.
        let name = arg
            .trim_start_matches('-')
            .split([' ', '='])
            .next()
            .unwrap_or_default()
            .to_string();
        let bad_value = match err.get(ContextKind::InvalidValue) {
            Some(clap::error::ContextValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        let from_file = origins.iter().find(|o| {
            o.flag == name && (bad_value.is_none() || bad_value.as_ref() == o.value.as_ref())
        });
        match from_file {
            Some(o) => {
                let rendered = err.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let msg = first.strip_prefix("error: ").unwrap_or(first);
                Err(ParseError::Config(format!(
                    "{path}:{}: key '{}': {msg}",
                    o.line, o.key
                )))
            }
            None => Err(ParseError::Clap(err)),
        }
    }
}

/// Why the command line did not parse.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own error (prints usage and exits with its code).
    Clap(clap::Error),
    /// A bad value in the config file, with the file, line and key.
    Config(String),
}

/// The deepest subcommand named among `words` (the arguments before `--config`), and its
/// path for messages (`estimator train`).
fn subcommand_before<'a>(cmd: &'a clap::Command, words: &[String]) -> (String, &'a clap::Command) {
    let mut cur = cmd;
    let mut names = Vec::new();
    for w in words {
        if let Some(sub) = cur.find_subcommand(w) {
            names.push(sub.get_name().to_string());
            cur = sub;
        }
    }
    (names.join(" "), cur)
}

/// The 1-based line on which `key` is assigned (`key = …` or `"key" = …`); 1 when not found.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| l.strip_prefix(&format!("'{key}'")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// The valid name nearest to `name` by edit distance (ties: the first in `valid`).
fn closest<'a>(name: &str, valid: &'a [String]) -> Option<&'a str> {
    valid
        .iter()
        .min_by_key(|v| strsim::levenshtein(name, v))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn run(args: &[&str]) -> Result<clap::ArgMatches, String> {
        let args = args.iter().map(|s| s.to_string()).collect();
        let cmd = crate::cli_command();
        let expanded = expand(args, &cmd).map_err(|e| format!("{e:#}"))?;
        expanded.parse(cmd).map_err(|e| match e {
            ParseError::Clap(e) => format!("clap: {}", e.render()),
            ParseError::Config(s) => s,
        })
    }

    /// Hostile `--config` files are errors naming the file: too large, or nested 100k deep
    /// (no stack overflow). Unknown keys name the line and the closest valid key; bad values
    /// name the file, line and key; a flag after `--config` wins.
    #[test]
    fn config_files_are_checked_and_errors_name_file_line_key() {
        let dir = std::env::temp_dir().join(format!("nag-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let deep = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let deep = write(&dir, "deep.toml", &deep);
        let err = run(&["xtask", "train", "--config", &deep]).unwrap_err();
        assert!(err.contains("deep.toml"), "{err}");
        let big = write(&dir, "big.toml", &"# padding\n".repeat(200_000));
        let err = run(&["xtask", "train", "--config", &big]).unwrap_err();
        assert!(err.contains("big.toml") && err.contains("limit"), "{err}");

        let good = write(&dir, "good.toml", "steps = 5\nnoise_dropout = 0.2\n");
        let m = run(&["xtask", "train", "--config", &good, "--steps", "7"]).unwrap();
        let (_, sub) = m.subcommand().unwrap();
        assert_eq!(sub.get_one::<u64>("steps"), Some(&7));
        assert_eq!(sub.get_one::<f64>("noise_dropout"), Some(&0.2));

        let typo = write(
            &dir,
            "typo.toml",
            "# a run\nsteps = 5\nnoise_dropuot = 0.2\n",
        );
        let err = run(&["xtask", "train", "--config", &typo]).unwrap_err();
        assert!(
            err.contains("typo.toml:3:")
                && err.contains("noise_dropuot")
                && err.contains("'noise-dropout'"),
            "{err}"
        );

        let bad = write(&dir, "bad.toml", "seed = 1\nsteps = \"many\"\n");
        let err = run(&["xtask", "train", "--config", &bad]).unwrap_err();
        assert!(
            err.contains("bad.toml:2:") && err.contains("'steps'") && err.contains("many"),
            "{err}"
        );
        // The same bad value on the command line is clap's own error, not the file's.
        let err = run(&["xtask", "train", "--config", &good, "--steps", "x"]).unwrap_err();
        assert!(err.starts_with("clap:"), "{err}");

        // Nested subcommands: the keys are checked against `estimator train`'s options.
        let est = write(&dir, "est.toml", "steps = 5\n");
        assert!(run(&["xtask", "estimator", "train", "--config", &est]).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
        // (The CLI is well formed.)
        crate::Cli::command().debug_assert();
    }

    #[test]
    fn negative_numbers_are_values_not_flags() {
        let err = run(&["xtask", "train", "--steps", "-5"]).unwrap_err();
        assert!(err.contains("'-5'") && err.contains("--steps"), "{err}");
        assert!(!err.contains("unexpected argument"), "{err}");
    }
}
