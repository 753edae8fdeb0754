//! Request budgets of an authenticated device and of its account, in this
//! gateway (DESIGN.md invariant 9's second half, "Front door"): a token
//! bucket (GCRA, from `governor`) per device and per account for each
//! request kind. Work that counts no guess but costs the vault an OPRF
//! evaluation (`RegisterStart`) or a quorum read (`Status`) is budgeted
//! tightly, so that no credential makes the vault work without bound; the
//! vault's own pacing still decides which guesses count.
//!
//! The budgets are per gateway: a phone that spreads over N gateways gets
//! N times the rate, which the deployment sizes for (phones stay on one
//! gateway while it is up). Over budget the request is answered `BUSY`
//! with the wait in `retry_after_ms`, before anything reaches the vault.
//!
//! Owns the policy and the buckets. Must never: block (a request is
//! answered or passed at once), key anything on what the phone says about
//! itself (keys are the authenticated device key and account), or grow
//! without bound (idle keys are dropped by [`Budgets::forget_idle`]).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// One bucket's shape: `burst` requests at once, refilled one every
/// `every_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// One more allowed every this many milliseconds.
    pub every_ms: u64,
}

impl Rate {
    const fn new(burst: u32, every_ms: u64) -> Self {
        Self { burst, every_ms }
    }

    fn quota(self) -> Quota {
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(Duration::from_millis(self.every_ms.max(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// The rates of one scope (a device, or an account), by request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KindRates {
    /// `Status`: a quorum read on the vault.
    pub status: Rate,
    /// `RegisterStart`: an OPRF evaluation that counts no guess.
    pub register_start: Rate,
    /// `RegisterFinish`: a commit.
    pub register_finish: Rate,
    /// `LoginStart`: a commit (and, when counted, a guess and an OPRF).
    pub login_start: Rate,
    /// `LoginFinish`: a verification (and a commit).
    pub login_finish: Rate,
}

/// Budgets per device and per account. Defaults (a phone backs up, restores
/// or changes a password a few times a day; a user has a few phones):
///
/// | kind | per device: burst, then one per | per account |
/// | --- | --- | --- |
/// | status | 10, 1 s | 30, 0.5 s |
/// | register_start | 5, 10 s | 10, 5 s |
/// | register_finish | 5, 10 s | 10, 5 s |
/// | login_start | 10, 1 s | 20, 0.5 s |
/// | login_finish | 20, 0.5 s | 40, 0.25 s |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Per device (its Noise static key).
    pub per_device: KindRates,
    /// Per account (all its devices on this gateway together).
    pub per_account: KindRates,
}

impl Default for KindRates {
    fn default() -> Self {
        BudgetConfig::default().per_device
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            per_device: KindRates {
                status: Rate::new(10, 1_000),
                register_start: Rate::new(5, 10_000),
                register_finish: Rate::new(5, 10_000),
                login_start: Rate::new(10, 1_000),
                login_finish: Rate::new(20, 500),
            },
            per_account: KindRates {
                status: Rate::new(30, 500),
                register_start: Rate::new(10, 5_000),
                register_finish: Rate::new(10, 5_000),
                login_start: Rate::new(20, 500),
                login_finish: Rate::new(40, 250),
            },
        }
    }
}

impl BudgetConfig {
    /// Budgets no test or load run reaches (the load generator measures
    /// capacity, not policy).
    pub fn unlimited() -> Self {
        let r = Rate::new(u32::MAX, 1);
        let k = KindRates {
            status: r,
            register_start: r,
            register_finish: r,
            login_start: r,
            login_finish: r,
        };
        Self {
            per_device: k,
            per_account: k,
        }
    }
}

/// The request kinds with a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Status`.
    Status,
    /// `RegisterStart`.
    RegisterStart,
    /// `RegisterFinish`.
    RegisterFinish,
    /// `LoginStart`.
    LoginStart,
    /// `LoginFinish`.
    LoginFinish,
}

impl Kind {
    /// The kind of a request, if it has one.
    pub fn of(req: &protocol_spec::msg::Request) -> Option<Self> {
        use protocol_spec::msg::request::Kind as K;
        Some(match req.kind.as_ref()? {
            K::Status(_) => Kind::Status,
            K::RegisterStart(_) => Kind::RegisterStart,
            K::RegisterFinish(_) => Kind::RegisterFinish,
            K::LoginStart(_) => Kind::LoginStart,
            K::LoginFinish(_) => Kind::LoginFinish,
        })
    }

    fn index(self) -> usize {
        self as usize
    }

    fn rate(self, r: &KindRates) -> Rate {
        match self {
            Kind::Status => r.status,
            Kind::RegisterStart => r.register_start,
            Kind::RegisterFinish => r.register_finish,
            Kind::LoginStart => r.login_start,
            Kind::LoginFinish => r.login_finish,
        }
    }
}

/// Which budget refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The device's own.
    Device,
    /// The account's (its devices together).
    Account,
}

impl Scope {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Device => "device",
            Scope::Account => "account",
        }
    }
}

/// A request over budget: who refused, and how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// The budget that refused.
    pub scope: Scope,
    /// Until the next request of this kind would pass.
    pub retry_after: Duration,
}

type Limiter<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The buckets of one gateway.
pub struct Budgets<C: Clock + Clone = DefaultClock> {
    clock: C,
    device: Vec<Limiter<[u8; 32], C>>,
    account: Vec<Limiter<String, C>>,
}

impl<C: Clock + Clone> std::fmt::Debug for Budgets<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets").finish_non_exhaustive()
    }
}

const KINDS: [Kind; 5] = [
    Kind::Status,
    Kind::RegisterStart,
    Kind::RegisterFinish,
    Kind::LoginStart,
    Kind::LoginFinish,
];

impl Budgets<DefaultClock> {
    /// Buckets of `cfg` on the real clock.
    pub fn new(cfg: &BudgetConfig) -> Self {
        Self::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Budgets<C> {
    /// Buckets of `cfg` on `clock` (tests pass a fake one).
    pub fn with_clock(cfg: &BudgetConfig, clock: C) -> Self {
        Self {
            device: KINDS
                .iter()
                .map(|k| {
                    RateLimiter::dashmap_with_clock(k.rate(&cfg.per_device).quota(), clock.clone())
                })
                .collect(),
            account: KINDS
                .iter()
                .map(|k| {
                    RateLimiter::dashmap_with_clock(k.rate(&cfg.per_account).quota(), clock.clone())
                })
                .collect(),
            clock,
        }
    }

    /// Takes one request of `kind` from the device's and then the
    /// account's bucket. A request the device's budget refuses takes
    /// nothing from the account's (one device cannot use up its account's
    /// budget beyond its own).
    pub fn check(&self, device: &[u8; 32], account: &str, kind: Kind) -> Result<(), OverBudget> {
        let i = kind.index();
        if let Err(n) = self.device[i].check_key(device) {
            return Err(OverBudget {
                scope: Scope::Device,
                retry_after: n.wait_time_from(self.clock.now()),
            });
        }
        if let Err(n) = self.account[i].check_key(&account.to_owned()) {
            return Err(OverBudget {
                scope: Scope::Account,
                retry_after: n.wait_time_from(self.clock.now()),
            });
        }
        Ok(())
    }

    /// Drops the buckets of keys that are full again (idle), so memory
    /// follows the active devices, not every device ever seen.
    pub fn forget_idle(&self) {
        for l in &self.device {
            l.retain_recent();
        }
        for l in &self.account {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn tight() -> BudgetConfig {
        let mut c = BudgetConfig::default();
        c.per_device.register_start = Rate::new(2, 1_000);
        c.per_account.register_start = Rate::new(3, 1_000);
        c
    }

    #[test]
    fn a_device_gets_its_burst_then_waits_and_refills() {
        let clock = FakeRelativeClock::default();
        let b = Budgets::with_clock(&tight(), clock.clone());
        let d = [1; 32];
        assert!(b.check(&d, "a", Kind::RegisterStart).is_ok());
        assert!(b.check(&d, "a", Kind::RegisterStart).is_ok());
        let over = b.check(&d, "a", Kind::RegisterStart).unwrap_err();
        assert_eq!(over.scope, Scope::Device);
        assert_eq!(over.retry_after, Duration::from_secs(1));
        // Other kinds have their own buckets.
        assert!(b.check(&d, "a", Kind::Status).is_ok());
        clock.advance(Duration::from_secs(1));
        assert!(b.check(&d, "a", Kind::RegisterStart).is_ok());
    }

    #[test]
    fn an_accounts_devices_share_the_account_budget() {
        let clock = FakeRelativeClock::default();
        let b = Budgets::with_clock(&tight(), clock.clone());
        // Three devices of one account (a SIM swap mints as many as it likes).
        assert!(b.check(&[1; 32], "a", Kind::RegisterStart).is_ok());
        assert!(b.check(&[2; 32], "a", Kind::RegisterStart).is_ok());
        assert!(b.check(&[3; 32], "a", Kind::RegisterStart).is_ok());
        let over = b.check(&[4; 32], "a", Kind::RegisterStart).unwrap_err();
        assert_eq!(over.scope, Scope::Account);
        // Another account is untouched.
        assert!(b.check(&[5; 32], "b", Kind::RegisterStart).is_ok());
    }

    #[test]
    fn a_device_refused_by_its_own_budget_takes_nothing_from_the_accounts() {
        let clock = FakeRelativeClock::default();
        let b = Budgets::with_clock(&tight(), clock.clone());
        for _ in 0..10 {
            let _ = b.check(&[1; 32], "a", Kind::RegisterStart);
        }
        // The account spent 2 (what the device passed), so 1 remains.
        assert!(b.check(&[2; 32], "a", Kind::RegisterStart).is_ok());
        assert_eq!(
            b.check(&[3; 32], "a", Kind::RegisterStart)
                .unwrap_err()
                .scope,
            Scope::Account
        );
    }

    #[test]
    fn the_defaults_and_unlimited_parse_from_toml() {
        let text = toml::to_string(&BudgetConfig::default()).unwrap();
        let back: BudgetConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, BudgetConfig::default());
        let partial: BudgetConfig =
            toml::from_str("[per_device.status]\nburst = 3\nevery_ms = 2000\n").unwrap();
        assert_eq!(partial.per_device.status, Rate::new(3, 2000));
        assert_eq!(partial.per_account, BudgetConfig::default().per_account);
        let b = Budgets::new(&BudgetConfig::unlimited());
        for _ in 0..1000 {
            assert!(b.check(&[1; 32], "a", Kind::LoginStart).is_ok());
        }
    }
}
