//! `netcontrol check-policy FILE`: validate, and print the policy normalized.

use super::CheckPolicyArgs;
use crate::{
    policy::file::{load, render},
    resolve::system_servers,
};

pub fn main(args: &CheckPolicyArgs) -> i32 {
    match load(&args.file) {
        Ok(p) => {
            let system =
                (p.dns.servers.is_none() && p.uses_dns()).then(system_servers).and_then(Result::ok);
            let count = |n: usize, one: &str, many: &str| {
                format!("{n} {}", if n == 1 { one } else { many })
            };
            println!(
                "# {}: valid; {}, {} to follow in DNS, {}",
                args.file.display(),
                count(p.allow.len(), "rule", "rules"),
                count(p.names().len(), "name", "names"),
                count(p.wildcards().len(), "wildcard pattern", "wildcard patterns"),
            );
            print!("{}", render(&p, system.as_deref()));
            0
        }
        Err(e) => {
            eprintln!("netcontrol: {e}");
            1
        }
    }
}
