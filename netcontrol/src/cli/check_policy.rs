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
            println!(
                "# {}: valid; {} rules, {} names to follow in DNS, {} wildcard patterns",
                args.file.display(),
                p.allow.len(),
                p.names().len(),
                p.wildcards().len()
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
