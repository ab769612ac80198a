//! The rate limiter, as Triton defines it: with `--rate-limit execution_count`, an instance
//! whose `instance_group { rate_limiter { resources [...] } }` lists resources executes only
//! when all of them are free, across every model of the server. A resource is counted per
//! device (the instance's GPU, device 0 for CPU instances) unless it is `global`; there are as
//! many copies as `--rate-limit-resource <name>:<count>[:<device>]` says, or else as many as
//! the most any one loaded instance asks for. When several instances wait, the one chosen next
//! is weighted by `priority`: an instance with priority 2 gets half the executions of one with
//! priority 1 (weighted fair queueing over the waiting instances). Off by default, and then it
//! costs nothing.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::proto::inference::model_instance_group::Kind;

/// A resource as the limiter counts it: a name, on a device or global.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ResourceKey {
    /// The resource's name.
    name: String,
    /// Its device; none for a global resource.
    device: Option<i32>,
}

/// The server's rate limiter.
pub struct RateLimiter {
    /// Copies set by `--rate-limit-resource`: by (name, device), device none for "every device".
    counts: HashMap<(String, Option<i32>), u32>,
    /// The resources in use and the waiting instances.
    state: Mutex<State>,
}

/// What the limiter tracks under its lock.
#[derive(Default)]
struct State {
    /// Copies of each resource in use.
    in_use: HashMap<ResourceKey, u32>,
    /// What each registered instance needs, by instance id (for default counts).
    registered: HashMap<u64, Vec<(ResourceKey, u32)>>,
    /// Copies of each resource the registered instances name (kept as they come and go).
    capacity: HashMap<ResourceKey, u32>,
    /// Each instance's virtual finish time (weighted executions so far).
    finish: HashMap<u64, u64>,
    /// The virtual time of the last execution granted.
    now: u64,
    /// Instances waiting to execute, in arrival order.
    waiting: Vec<Waiter>,
    /// Next instance id.
    next_id: u64,
    /// Next arrival number.
    next_arrival: u64,
}

/// One instance waiting for its resources.
struct Waiter {
    /// The instance.
    id: u64,
    /// What it needs.
    needs: Vec<(ResourceKey, u32)>,
    /// Its weight (at least 1).
    priority: u64,
    /// When it started waiting.
    arrival: u64,
    /// Set and signalled when its resources are granted.
    slot: Arc<Slot>,
}

/// Where a waiting instance is told it may run.
#[derive(Default)]
struct Slot {
    /// Whether the resources were granted.
    granted: Mutex<bool>,
    /// Signalled on grant.
    ready: Condvar,
}

static LIMITER: OnceLock<RateLimiter> = OnceLock::new();

/// Turns the rate limiter on for this process (once, before models load).
pub fn configure(limiter: RateLimiter) -> Result<()> {
    LIMITER
        .set(limiter)
        .map_err(|_| Error::invalid("the rate limiter is configured already"))
}

/// The process's rate limiter, when it is on.
pub fn global() -> Option<&'static RateLimiter> {
    LIMITER.get()
}

impl RateLimiter {
    /// A limiter with the resource counts of `--rate-limit-resource` values
    /// (`<name>:<count>[:<device>]`).
    pub fn new<S: AsRef<str>>(resources: &[S]) -> Result<Self> {
        let mut counts = HashMap::new();
        for spec in resources {
            let spec = spec.as_ref();
            let parts: Vec<&str> = spec.split(':').map(str::trim).collect();
            let bad = |why: &str| {
                Error::invalid(format!(
                    "--rate-limit-resource '{spec}': {why} (expected <name>:<count>[:<device>])"
                ))
            };
            let (name, count, device) =
                match parts.as_slice() {
                    [name, count] => (*name, *count, None),
                    [name, count, device] => {
                        (
                            *name,
                            *count,
                            Some(device.parse::<i32>().ok().filter(|d| *d >= 0).ok_or_else(
                                || bad(&format!("'{device}' is not a device number")),
                            )?),
                        )
                    }
                    _ => return Err(bad("wrong number of fields")),
                };
            if name.is_empty() {
                return Err(bad("the name is empty"));
            }
            let count = count
                .parse::<u32>()
                .map_err(|_| bad(&format!("'{count}' is not a count")))?;
            counts.insert((name.to_string(), device), count);
        }
        Ok(RateLimiter {
            counts,
            state: Mutex::new(State::default()),
        })
    }

    /// Copies of a resource `--rate-limit-resource` gives (for its device, or for every
    /// device), if it names the resource.
    fn configured(&self, key: &ResourceKey) -> Option<u32> {
        let any_device = || self.counts.get(&(key.name.clone(), None));
        match key.device {
            Some(device) => self
                .counts
                .get(&(key.name.clone(), Some(device)))
                .or_else(any_device),
            None => any_device(),
        }
        .copied()
    }

    /// Recomputes the copies of every resource a registered instance names (after an
    /// instance came or went): as configured, or else the most any one of them asks for.
    fn recount(&self, state: &mut State) {
        let mut capacity: HashMap<ResourceKey, u32> = HashMap::new();
        for (key, n) in state.registered.values().flatten() {
            let copies = capacity.entry(key.clone()).or_insert(0);
            *copies = (*copies).max(*n);
        }
        for (key, copies) in capacity.iter_mut() {
            if let Some(configured) = self.configured(key) {
                *copies = configured;
            }
        }
        state.capacity = capacity;
    }

    /// Whether every need fits beside what is in use.
    fn fits(&self, state: &State, needs: &[(ResourceKey, u32)]) -> bool {
        needs.iter().all(|(key, n)| {
            state.in_use.get(key).copied().unwrap_or(0) + n
                <= state.capacity.get(key).copied().unwrap_or(0)
        })
    }

    /// Grants waiting instances whose resources are free, the lowest virtual start first.
    fn dispatch(&self, state: &mut State) {
        let now = state.now;
        let mut order: Vec<(u64, u64, usize)> = state
            .waiting
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let start = state.finish.get(&w.id).copied().unwrap_or(0).max(now);
                (start, w.arrival, i)
            })
            .collect();
        order.sort_unstable();
        let mut granted = std::collections::HashSet::new();
        for (start, arrival, i) in order {
            if !self.fits(state, &state.waiting[i].needs) {
                continue;
            }
            let waiter = &state.waiting[i];
            for (key, n) in &waiter.needs {
                *state.in_use.entry(key.clone()).or_insert(0) += n;
            }
            state.finish.insert(waiter.id, start + waiter.priority);
            state.now = state.now.max(start);
            granted.insert(arrival);
        }
        // The granted leave the queue (the rest keep their arrival order) and are woken.
        state.waiting.retain(|waiter| {
            if !granted.contains(&waiter.arrival) {
                return true;
            }
            *waiter.slot.granted.lock() = true;
            waiter.slot.ready.notify_one();
            false
        });
    }
}

/// One instance's claim on the limiter: what it needs and its priority.
pub struct InstanceLimit {
    /// The limiter.
    limiter: &'static RateLimiter,
    /// The instance's id with the limiter.
    id: u64,
    /// What one execution needs.
    needs: Vec<(ResourceKey, u32)>,
    /// Its weight (at least 1).
    priority: u64,
}

/// Resources held for one execution; dropping it frees them.
pub struct Grant<'a> {
    /// Whose resources (none once given back).
    limit: Option<&'a InstanceLimit>,
}

impl InstanceLimit {
    /// Waits until the instance's resources are free and takes them.
    pub fn acquire(&self) -> Grant<'_> {
        self.wait_turn(false)
    }

    /// Queues the instance for its resources and waits for them; with `release`, first gives
    /// back the ones it holds, in the same step, so that the choice of who runs next sees
    /// this instance waiting beside the others (priorities can only weigh waiters).
    fn wait_turn(&self, release: bool) -> Grant<'_> {
        let slot = Arc::new(Slot::default());
        {
            let mut state = self.limiter.state.lock();
            if release {
                self.give_back(&mut state);
            }
            let arrival = state.next_arrival;
            state.next_arrival += 1;
            state.waiting.push(Waiter {
                id: self.id,
                needs: self.needs.clone(),
                priority: self.priority,
                arrival,
                slot: Arc::clone(&slot),
            });
            self.limiter.dispatch(&mut state);
        }
        let mut granted = slot.granted.lock();
        while !*granted {
            slot.ready.wait(&mut granted);
        }
        Grant { limit: Some(self) }
    }

    /// Returns the resources one execution took.
    fn give_back(&self, state: &mut State) {
        for (key, n) in &self.needs {
            if let Some(used) = state.in_use.get_mut(key) {
                *used = used.saturating_sub(*n);
            }
        }
    }
}

impl<'a> Grant<'a> {
    /// Gives the resources back and waits for the next turn, as one step: use it when the
    /// instance has more work waiting.
    pub fn renew(mut self) -> Grant<'a> {
        match self.limit.take() {
            Some(limit) => limit.wait_turn(true),
            None => self,
        }
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        if let Some(limit) = self.limit.take() {
            let mut state = limit.limiter.state.lock();
            limit.give_back(&mut state);
            limit.limiter.dispatch(&mut state);
        }
    }
}

impl Drop for InstanceLimit {
    fn drop(&mut self) {
        let mut state = self.limiter.state.lock();
        state.registered.remove(&self.id);
        self.limiter.recount(&mut state);
        state.finish.remove(&self.id);
        // Fewer registered instances can lower a default count; others may fit now anyway.
        self.limiter.dispatch(&mut state);
    }
}

/// The limits of a model's instances, in the order the instances are created (one entry per
/// instance; none when the limiter is off or the instance lists no resources).
pub fn instance_limits(config: &ModelConfig) -> Result<Vec<Option<Arc<InstanceLimit>>>> {
    let mut limits = Vec::new();
    let limiter = global();
    for group in &config.instance_group {
        for i in 0..group.count.max(0) as usize {
            let Some(limiter) = limiter else {
                limits.push(None);
                continue;
            };
            let Some(spec) = &group.rate_limiter else {
                limits.push(None);
                continue;
            };
            let device = match Kind::try_from(group.kind) {
                Ok(Kind::Gpu) if !group.gpus.is_empty() => group.gpus[i % group.gpus.len()],
                _ => 0,
            };
            let mut needs: Vec<(ResourceKey, u32)> = Vec::new();
            for r in &spec.resources {
                if r.name.is_empty() {
                    return Err(Error::invalid(format!(
                        "model '{}': instance group '{}' lists a rate limiter resource without \
                         a name",
                        config.name, group.name
                    )));
                }
                let key = ResourceKey {
                    name: r.name.clone(),
                    device: (!r.global).then_some(device),
                };
                match needs.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += r.count,
                    None => needs.push((key, r.count)),
                }
            }
            needs.retain(|(_, n)| *n > 0);
            if needs.is_empty() {
                limits.push(None);
                continue;
            }
            let mut state = limiter.state.lock();
            for (key, n) in &needs {
                if let Some(configured) = limiter.configured(key)
                    && *n > configured
                {
                    return Err(Error::invalid(format!(
                        "model '{}': instance group '{}' needs {n} of rate limiter resource \
                         '{}'{} but --rate-limit-resource gives {configured}",
                        config.name,
                        group.name,
                        key.name,
                        key.device
                            .map_or(" (global)".to_string(), |d| format!(" on device {d}"))
                    )));
                }
            }
            let id = state.next_id;
            state.next_id += 1;
            state.registered.insert(id, needs.clone());
            limiter.recount(&mut state);
            limits.push(Some(Arc::new(InstanceLimit {
                limiter,
                id,
                needs,
                priority: u64::from(spec.priority.max(1)),
            })));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(limiter: RateLimiter) -> &'static RateLimiter {
        Box::leak(Box::new(limiter))
    }

    fn limit(limiter: &'static RateLimiter, needs: &[(&str, u32)], priority: u64) -> InstanceLimit {
        let needs: Vec<_> = needs
            .iter()
            .map(|(n, c)| {
                (
                    ResourceKey {
                        name: n.to_string(),
                        device: Some(0),
                    },
                    *c,
                )
            })
            .collect();
        let mut state = limiter.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.registered.insert(id, needs.clone());
        limiter.recount(&mut state);
        InstanceLimit {
            limiter,
            id,
            needs,
            priority,
        }
    }

    #[test]
    fn parses_resource_flags() {
        let l = RateLimiter::new(&["R1:4", "R2:2:1"]).unwrap();
        assert_eq!(l.counts[&("R1".to_string(), None)], 4);
        assert_eq!(l.counts[&("R2".to_string(), Some(1))], 2);
        for bad in ["R1", "R1:x", ":3", "R1:1:gpu", "R1:1:2:3", "R1:-1"] {
            assert!(RateLimiter::new(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_resource_of_one_is_held_by_one_execution_at_a_time() {
        let limiter = leak(RateLimiter::new(&["R:1"]).unwrap());
        let a = Arc::new(limit(limiter, &[("R", 1)], 1));
        let b = Arc::new(limit(limiter, &[("R", 1)], 1));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = [a, b]
            .into_iter()
            .map(|l| {
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _g = l.acquire();
                        let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        std::thread::yield_now();
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn priority_weights_the_choice_among_waiters() {
        let limiter = leak(RateLimiter::new::<&str>(&[]).unwrap());
        let holder = limit(limiter, &[("R", 1)], 1);
        let fast = limit(limiter, &[("R", 1)], 1);
        let slow = limit(limiter, &[("R", 1)], 2);
        // Simulate both always waiting: grant one at a time and record who got it.
        let mut order = String::new();
        let hold = holder.acquire();
        let _ = &hold;
        for _ in 0..30 {
            let mut state = limiter.state.lock();
            for (l, arrival) in [(&fast, 0u64), (&slow, 1)] {
                if !state.waiting.iter().any(|w| w.id == l.id) {
                    let arrival = state.next_arrival + arrival;
                    state.waiting.push(Waiter {
                        id: l.id,
                        needs: l.needs.clone(),
                        priority: l.priority,
                        arrival,
                        slot: Arc::new(Slot::default()),
                    });
                }
            }
            state.next_arrival += 2;
            // Free the resource and let the limiter choose.
            *state.in_use.get_mut(&holder.needs[0].0).unwrap() = 0;
            let before: Vec<u64> = state.waiting.iter().map(|w| w.id).collect();
            limiter.dispatch(&mut state);
            let after: Vec<u64> = state.waiting.iter().map(|w| w.id).collect();
            let chosen = before.into_iter().find(|id| !after.contains(id)).unwrap();
            order.push(if chosen == fast.id { 'F' } else { 'S' });
        }
        let f = order.matches('F').count();
        assert_eq!(f, 20, "{order}");
        drop(hold);
    }
}
