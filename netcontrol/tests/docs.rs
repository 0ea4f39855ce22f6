//! The documentation is tested against the parser: every sample in the README and in the help
//! texts loads with the real binary, every option the README lists exists (and every option
//! `run` has is listed), and the README's table of shielded addresses is the one compiled in.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Output},
};

use netcontrol::policy::compile::SHIELDS;

const README: &str = include_str!("../../README.md");

fn netcontrol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netcontrol")).args(args).output().expect("run netcontrol")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The README section under `heading` (a line starting with it), up to the next heading of the
/// same or a higher level.
fn section(heading: &str) -> &'static str {
    let start = README.find(&format!("\n{heading}")).unwrap_or_else(|| panic!("no {heading:?}"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let body = &README[start + 1..];
    let end = body
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| {
            let hashes = body[i..].chars().take_while(|c| *c == '#').count();
            (1..=level).contains(&hashes) && body[i + hashes..].starts_with(' ')
        })
        .unwrap_or(body.len());
    &body[..end]
}

/// The fenced ```yaml blocks of a piece of the README.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("an unterminated ```yaml block");
        blocks.push(body[..end].to_owned());
        rest = &body[end..][3..];
    }
    blocks
}

/// The indented sample after `title` in a help text, dedented.
fn help_sample(help: &str, title: &str) -> String {
    let start = help.find(title).unwrap_or_else(|| panic!("help lacks {title:?}:\n{help}"));
    help[start + title.len()..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect()
}

fn check_policy(dir: &Path, name: &str, yaml: &str) {
    let file = dir.join(name);
    std::fs::write(&file, yaml).expect("write");
    let out = netcontrol(&["check-policy", file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{name} does not load:\n{yaml}\n{}", text(&out));
}

fn check_daemon_config(dir: &Path, name: &str, yaml: &str) {
    let file = dir.join(name);
    std::fs::write(&file, yaml).expect("write");
    // The samples name a policy file of their own.
    std::fs::write(dir.join("web-policy.yaml"), "allow: [10.0.0.0/8:443]\n").expect("write");
    let out = netcontrol(&["daemon", "--config", file.to_str().expect("utf8"), "--check"]);
    assert!(out.status.success(), "{name} does not load:\n{yaml}\n{}", text(&out));
}

#[test]
fn the_readme_policy_file_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = yaml_blocks(section("## Policy files"));
    assert_eq!(blocks.len(), 1, "one sample policy file");
    check_policy(dir.path(), "readme-policy.yaml", &blocks[0]);
}

#[test]
fn the_help_policy_sample_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let help = text(&netcontrol(&["check-policy", "--help"]));
    let sample = help_sample(&help, "Policy file format:");
    assert!(sample.contains("sockets:") && sample.contains("listen:"), "{sample}");
    check_policy(dir.path(), "help-policy.yaml", &sample);
}

#[test]
fn the_readme_and_help_daemon_configurations_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = yaml_blocks(section("### `netcontrol daemon"));
    assert_eq!(blocks.len(), 1, "one sample configuration");
    check_daemon_config(dir.path(), "readme-daemon.yaml", &blocks[0]);

    let help = text(&netcontrol(&["daemon", "--help"]));
    check_daemon_config(dir.path(), "help-daemon.yaml", &help_sample(&help, "Configuration file:"));

    // The Docker and Kubernetes samples are parts of a configuration: with the policies they
    // name, each is a whole one.
    let policies = "policies:\n  web: {allow: []}\n  batch: {allow: []}\n  sandbox: {allow: []}\n  restricted: {allow: []}\n";
    for (heading, name) in [("### Docker containers", "docker"), ("### Kubernetes", "kubernetes")] {
        let blocks = yaml_blocks(section(heading));
        assert!(!blocks.is_empty(), "{heading} has a sample");
        for (i, b) in blocks.iter().enumerate() {
            check_daemon_config(dir.path(), &format!("{name}-{i}.yaml"), &format!("{policies}{b}"));
        }
    }
}

#[test]
fn every_rule_the_readme_shows_is_one() {
    let rules: Vec<&str> = section("### Rules")
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| l.split('|').nth(1).expect("a cell").split(", "))
        .map(|c| c.trim().trim_matches('`'))
        .collect();
    assert!(rules.len() >= 10, "{rules:?}");
    let yaml: String = std::iter::once("allow:\n".to_owned())
        .chain(rules.iter().map(|r| format!("  - \"{r}\"\n")))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    check_policy(dir.path(), "rules.yaml", &yaml);
}

/// The long options in a piece of text.
fn long_options(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        let before = text[..i].chars().next_back();
        if name.len() > 1 && !matches!(before, Some(c) if c.is_alphanumeric() || c == '-') {
            found.insert(format!("--{name}"));
        }
    }
    found
}

#[test]
fn the_readme_lists_exactly_the_options_of_run() {
    let table: String = section("### `netcontrol run")
        .lines()
        .filter(|l| l.starts_with("| `-"))
        .map(|l| format!("{}\n", l.split('|').nth(1).expect("a cell")))
        .collect();
    let documented = long_options(&table);
    let help = text(&netcontrol(&["run", "--help"]));
    let options: String = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut actual = long_options(&options);
    // Global options and clap's own are documented once, elsewhere.
    for global in ["--help", "--version", "--log-level", "--log-format"] {
        actual.remove(global);
    }
    assert_eq!(documented, actual, "README's options of run vs. `netcontrol run --help`");
}

#[test]
fn the_readme_shielded_addresses_are_the_compiled_ones() {
    let table = section("### Rules").split("**Shielded addresses**").nth(1).expect("the table");
    let cells: Vec<String> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| addresses"))
        .flat_map(|l| {
            l.split('|').nth(1).expect("a cell").split(", ").map(str::to_owned).collect::<Vec<_>>()
        })
        .map(|c| c.trim().trim_matches('`').to_owned())
        .collect();
    let documented: BTreeSet<String> = cells.into_iter().collect();
    let compiled: BTreeSet<String> = SHIELDS
        .iter()
        .map(|s| match s.net.split_once('/') {
            Some((a, "32" | "128")) => a.to_owned(),
            _ => s.net.to_owned(),
        })
        .collect();
    assert_eq!(documented, compiled, "README's shielded addresses vs. SHIELDS");
}
