//! Plugins behind the host's retry-policy trait: the adapter from a
//! plugin's calls to [`RetryPolicy`], with the built-in policy standing in
//! for roles nobody plays and for calls that fault, and faults counted
//! towards a plugin's quarantine. It deals in the host's own types; the
//! contract's stay in the plugin host.

use crate::events::RepoRef;
use crate::plugin::{CallContext, Fault, Plugin, Told};

use super::{AttemptContext, Builtin, Decision, RetryPolicy};

/// Plugins behind the host's retry-policy trait, one per role, with the
/// built-in policy standing in for roles nobody plays and for calls that
/// fault.
///
/// The retry role decides whether to retry and how long to wait; a
/// separate backoff plugin then chooses the delay of a retry (the curve,
/// not the eligibility). When one plugin plays both roles its retry answer
/// is final.
pub struct WasmPolicy {
    retry: Option<Plugin>,
    backoff: Option<Plugin>,
    builtin: Builtin,
    told: Told,
    /// The context the plugins are called with, kept between decisions:
    /// its repository strings are copied once, not at every decision.
    context: CallContext,
    /// Faults so far (the count reported in logs and metrics).
    pub faults: u64,
    notices: Vec<String>,
    /// Faults since the last `take_faults`, also among the notices.
    fault_log: Vec<String>,
    /// The host's retry budget (remaining, capacity), when the daemon
    /// budgets this host's retries.
    budget: Option<(u32, u32)>,
}

impl WasmPolicy {
    /// `plugin` for every policy role it exports.
    pub fn new(plugin: Plugin, builtin: Builtin, repo: RepoRef, told: Told) -> Self {
        let (retry, backoff) = if plugin.roles.retry {
            (Some(plugin), None)
        } else {
            (None, Some(plugin))
        };
        WasmPolicy::with_roles(retry, backoff, builtin, repo, told)
    }

    /// `retry` for the retry role and `backoff` for the backoff role (each
    /// may be absent: the built-in plays it).
    pub fn with_roles(
        retry: Option<Plugin>,
        backoff: Option<Plugin>,
        builtin: Builtin,
        repo: RepoRef,
        told: Told,
    ) -> Self {
        WasmPolicy {
            retry: retry.filter(|p| p.roles.retry),
            backoff: backoff.filter(|p| p.roles.backoff),
            builtin,
            context: CallContext::new(&repo, &told),
            told,
            faults: 0,
            notices: Vec::new(),
            fault_log: Vec::new(),
            budget: None,
        }
    }

    /// The plugin playing the retry role, else the backoff role.
    pub fn plugin(&self) -> Option<&Plugin> {
        self.retry.as_ref().or(self.backoff.as_ref())
    }

    /// Whether every plugin of this policy is quarantined.
    pub fn is_quarantined(&self) -> bool {
        self.retry
            .iter()
            .chain(self.backoff.iter())
            .all(Plugin::is_quarantined)
    }

    /// The message of the failure being decided about (passed to the plugin).
    pub fn set_failure_message(&mut self, message: &str) {
        self.context.set_failure_message(message);
    }

    /// Counts a fault of `plugin` and reports it (and a new quarantine).
    fn record_fault(&mut self, role: &str, fault: &Fault, plugin: &Plugin) {
        self.faults += 1;
        let mut said = vec![format!(
            "plugin {} ({role}) {fault}; the built-in policy decided instead",
            plugin.name
        )];
        if let Some(count) = plugin.faulted() {
            said.push(format!(
                "plugin {} quarantined after {count} consecutive faults; the built-in policy decides until the plugin's file changes",
                plugin.name
            ));
        }
        self.notices.extend(said.iter().cloned());
        self.fault_log.extend(said);
    }

    fn drain_plugin_logs(&mut self) {
        for plugin in self.retry.iter().chain(self.backoff.iter()) {
            for line in plugin.env().take_logs() {
                if line.is_loud() {
                    self.notices
                        .push(format!("plugin {}: {}", plugin.name, line.message));
                }
            }
        }
    }

    /// The retry role's answer: the plugin's, or the built-in's when there
    /// is no usable plugin or it faulted.
    fn eligibility(&mut self, ctx: &AttemptContext, wit_ctx: &CallContext) -> Decision {
        let told = self.told;
        let Some(mut plugin) = self.retry.take().filter(|p| !p.is_quarantined()) else {
            return self.builtin.decide(ctx);
        };
        let decision = match plugin.decide(wit_ctx, &told) {
            Ok(d) => {
                plugin.succeeded();
                d
            }
            Err(fault) => {
                self.record_fault("retry", &fault, &plugin);
                self.builtin.decide(ctx)
            }
        };
        self.retry = Some(plugin);
        decision
    }

    /// `decision` with its delay from the backoff plugin, when one plays
    /// that role and is usable.
    fn shaped(&mut self, decision: Decision, wit_ctx: &CallContext) -> Decision {
        let Decision::RetryAfter { timeout, .. } = decision else {
            return decision;
        };
        let told = self.told;
        let Some(mut plugin) = self.backoff.take().filter(|p| !p.is_quarantined()) else {
            return decision;
        };
        let shaped = match plugin.delay(wit_ctx, &told) {
            Ok(delay) => {
                plugin.succeeded();
                Decision::RetryAfter { delay, timeout }
            }
            Err(fault) => {
                self.record_fault("backoff", &fault, &plugin);
                decision
            }
        };
        self.backoff = Some(plugin);
        shaped
    }
}

impl RetryPolicy for WasmPolicy {
    fn name(&self) -> &str {
        self.plugin().map(|p| p.name.as_str()).unwrap_or("builtin")
    }

    fn decide(&mut self, ctx: &AttemptContext) -> Decision {
        // Taken out for the calls (they borrow the policy), put back after.
        let mut wit_ctx = std::mem::replace(&mut self.context, CallContext::empty());
        wit_ctx.refresh(ctx, &self.told, self.budget);
        let decision = self.eligibility(ctx, &wit_ctx);
        let decision = self.shaped(decision, &wit_ctx);
        self.context = wit_ctx;
        self.drain_plugin_logs();
        decision
    }

    fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    fn take_faults(&mut self) -> Vec<String> {
        std::mem::take(&mut self.fault_log)
    }

    fn note_failure_message(&mut self, message: &str) {
        self.set_failure_message(message);
    }

    fn note_budget(&mut self, remaining: u32, capacity: u32) {
        self.budget = Some((remaining, capacity));
    }
}
