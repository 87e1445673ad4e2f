//! Hosts as Linux network namespaces (root only): a bridge in this
//! namespace, and one namespace per host joined to it by a veth pair, each
//! with its own address on a /24. The test process reaches every host
//! through the bridge's address. Everything is torn down on drop, after a
//! failure too.

use std::process::Command;

pub struct Net {
    bridge: String,
    /// Namespace names, host 0 first.
    hosts: Vec<String>,
    subnet: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Net {
    /// `hosts` namespaces on `10.231.<net>.0/24`: host i at `.i+1`, the
    /// bridge at `.254`. None (the test is skipped) when not root.
    pub fn new(net: u8, hosts: usize) -> Option<Net> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: hosts as network namespaces need root; CI runs as root");
            return None;
        }
        let tag = format!("hg{net}x{}", std::process::id() % 10_000);
        let subnet = format!("10.231.{net}");
        let this =
            Net { bridge: format!("{tag}br"), hosts: (0..hosts).map(|i| format!("{tag}h{i}")).collect(), subnet };
        // Left-overs of a run that was killed before it could tidy up.
        this.teardown();
        ip(&["link", "add", &this.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}.254/24", this.subnet), "dev", &this.bridge]);
        ip(&["link", "set", &this.bridge, "up"]);
        for (i, ns) in this.hosts.iter().enumerate() {
            let (outer, inner) = (format!("{ns}o"), format!("{ns}i"));
            ip(&["netns", "add", ns]);
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &outer, "master", &this.bridge]);
            ip(&["link", "set", &outer, "up"]);
            ip(&["link", "set", &inner, "netns", ns]);
            ip(&["netns", "exec", ns, "ip", "addr", "add", &format!("{}/24", this.addr(i)), "dev", &inner]);
            ip(&["netns", "exec", ns, "ip", "link", "set", &inner, "up"]);
            ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
        }
        Some(this)
    }

    pub fn ns(&self, host: usize) -> &str {
        &self.hosts[host]
    }

    /// The address of host `host`.
    pub fn addr(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, host + 1)
    }

    /// Cut the host's link (a partition): nothing goes in or out.
    pub fn cut(&self, host: usize) {
        ip(&["link", "set", &format!("{}o", self.hosts[host]), "down"]);
    }

    /// Restore the host's link.
    pub fn heal(&self, host: usize) {
        ip(&["link", "set", &format!("{}o", self.hosts[host]), "up"]);
    }

    /// Every process running on the host.
    pub fn pids(&self, host: usize) -> Vec<i32> {
        let out = Command::new("ip").args(["netns", "pids", &self.hosts[host]]).output().expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// The host dies: SIGKILL to every process on it.
    pub fn kill_host(&self, host: usize) {
        for pid in self.pids(host) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn teardown(&self) {
        for (i, ns) in self.hosts.iter().enumerate() {
            if Command::new("ip").args(["netns", "pids", ns]).output().is_ok_and(|o| o.status.success()) {
                self.kill_host(i);
            }
            let _ = Command::new("ip").args(["link", "del", &format!("{ns}o")]).output();
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}
