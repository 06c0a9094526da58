//! Getting hits from every worker to Matomo. Each VM (every worker's, and the main thread's)
//! runs one [`Delivery`]: on its tick it hands the hits its worker encoded to the VM that sends
//! for the whole Envoy, the leader (see `leader.rs`), over a shared queue. The leader drains that
//! queue into [`Lanes`], one set per token (hits of sites that share a token share bulk calls),
//! and makes the calls; it also checks each token's sites with Matomo's API at start.
//!
//! Everything here reaches the host through [`Host`], so the whole exchange between VMs, the
//! leader election and Matomo's answers run in native tests against a fake host.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::Settings;
use crate::host::{Host, Post};
use crate::lanes::{Lanes, Outcome};
use crate::leader::{self, Record, Step};
use crate::log_limit::{held_drops, LogLimit};
use crate::matomo::{read_answer, read_site_check, site_check_body, Answer, SiteCheck};
use crate::metrics::{Counter, Dropped};
use crate::outbox;
use crate::tracker::Tracker;

/// At most one log line about Matomo trouble per this period, per VM.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How soon the start-up check of site and token is tried again when Matomo could not answer.
const SITE_CHECK_RETRY: Duration = Duration::from_secs(30);
/// How often a refused token is tried again, and a batch found wholly invalid checked: each
/// call with a refused token is a failed login to Matomo, which blocks the proxy's address
/// after 20 in an hour.
const SITE_RECHECK: Duration = Duration::from_secs(600);

pub struct Delivery {
    /// This VM's name in leader records: random, so no two VMs share one.
    id: u64,
    /// One per token in `Settings::tokens`.
    groups: Vec<Group>,
    /// The shared queue every VM of this config fills; `None`: the host has none, and this VM
    /// sends its own hits.
    queue: Option<u32>,
    leader_key: String,
    leading: bool,
    calls: HashMap<u32, Call>,
    log: LogLimit,
    /// The plugin is going away: once nothing is left, tell the host.
    finishing: bool,
}

/// The hits of the sites that share one token.
struct Group {
    lanes: Lanes,
    /// Its sites' ids, for the check and for log lines.
    sites: Vec<u64>,
    has_token: bool,
    /// When to check its sites and token with Matomo's API; `None`: done, or no token.
    site_check: Option<Duration>,
    /// When it was last checked: a batch found wholly invalid checks again after
    /// [`SITE_RECHECK`].
    site_checked: Option<Duration>,
    /// The check found the token refused: nothing is sent with it until a check passes.
    token_refused: bool,
    /// The check found a site unknown or the token unable to write to it.
    site_wrong: bool,
    /// Its first check has been answered (or could not be made): until then nothing is sent
    /// with an unchecked token, which may be one Matomo counts as a failed login.
    checked: bool,
}

enum Call {
    Bulk {
        group: usize,
        lane: usize,
        started: Duration,
    },
    SiteCheck {
        group: usize,
    },
}

impl Delivery {
    /// `queue`: the shared queue the host gave this config, if any; `id`: random per VM.
    pub fn new(settings: &Settings, queue: Option<u32>, id: u64, now: Duration) -> Self {
        let groups = settings
            .tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let mut sites: Vec<u64> = settings
                    .sites
                    .all()
                    .filter(|s| s.token == i)
                    .map(|s| s.hits.id_site())
                    .collect();
                sites.sort_unstable();
                sites.dedup();
                Group {
                    lanes: Lanes::new(settings.batch, token.as_ref(), now),
                    sites,
                    has_token: token.is_some(),
                    site_check: token.is_some().then_some(now),
                    site_checked: None,
                    site_wrong: false,
                    token_refused: false,
                    checked: token.is_none(),
                }
            })
            .collect();
        Delivery {
            id,
            groups,
            queue,
            leader_key: format!("{}/leader", queue_name(settings)),
            leading: false,
            calls: HashMap::new(),
            log: LogLimit::new(LOG_EVERY),
            finishing: false,
        }
    }

    /// Hits this VM holds for Matomo (queued, waiting or in flight): the `hits_queued` gauge,
    /// meaningful on the leader.
    pub fn pending(&self) -> usize {
        self.groups.iter().map(|g| g.lanes.pending()).sum()
    }

    pub fn leading(&self) -> bool {
        self.leading
    }

    /// One tick: take or keep the lead, move hits toward Matomo, check sites, send what is due.
    pub fn tick(&mut self, host: &impl Host, tracker: &mut Tracker, now: Duration) {
        self.lead(host, now);
        self.collect(host, tracker, now);
        if self.leading {
            self.check_sites(host, tracker, now);
            self.refuse_refused(tracker, now);
        }
        self.send_due(host, tracker, now);
        tracker.log_held_drops(now);
    }

    /// Matomo's answer to call `token` (`status`: none when the call failed or timed out).
    pub fn answer(
        &mut self,
        host: &impl Host,
        tracker: &mut Tracker,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        now: Duration,
    ) {
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        match call {
            Call::Bulk {
                group,
                lane,
                started,
            } => {
                let timeout = tracker.settings.http_timeout;
                let timed_out =
                    status.is_none() && now.saturating_sub(started) >= timeout.mul_f32(0.9);
                let mut answer = read_answer(status, body, timed_out);
                // A 400 (QueuedTracking refusing a bulk call) for a site the check found wrong
                // is that, not one bad hit among good ones.
                let site_wrong = self.groups.get(group).is_some_and(|g| g.site_wrong);
                if let (Answer::Split(reason), Some(400), true) = (&answer, status, site_wrong) {
                    answer = Answer::Invalid(format!("{reason}; the site check found it wrong"));
                }
                self.settle(tracker, group, lane, answer, now);
            }
            Call::SiteCheck { group } => self.checked(group, status, body, now),
        }
        self.send_due(host, tracker, now);
    }

    /// The plugin is going away (listener update, drain, shutdown). A worker hands its last
    /// hits to the VM that sends, if that one still beats; the sender (or a worker that finds
    /// none) then sends everything it holds, and what is left on the shared queue, so none is
    /// lost silently. On shutdown Envoy stops its workers first and the main thread, whose VM
    /// usually sends, last, so the last calls leave; Envoy does not wait for their answers
    /// (envoy/drain.sh is the way to be sure). True when nothing is left; else the host is told
    /// `done` once the last call is answered.
    pub fn finish(&mut self, host: &impl Host, tracker: &mut Tracker, now: Duration) -> bool {
        self.lead(host, now);
        if !self.leading && self.sender_alive(host, now) {
            self.collect(host, tracker, now);
            return true;
        }
        let queue = self.queue.take();
        let leading = self.leading;
        self.leading = true;
        self.collect(host, tracker, now);
        if let Some(queue) = queue.filter(|_| leading) {
            let mut entries: Vec<_> = std::iter::from_fn(|| host.dequeue(queue))
                .flat_map(|message| outbox::decode(&message).collect::<Vec<_>>())
                .collect();
            entries.sort_by_key(|(_, _, at, _)| *at);
            for (group, key, _, hit) in entries {
                self.keep(tracker, group, key, hit, now);
            }
            // Let another VM of this config take over at once.
            if let Some((bytes, cas)) = host.shared_data(&self.leader_key) {
                if Record::decode(&bytes).is_some_and(|r| r.holder == self.id) {
                    host.set_shared_data(&self.leader_key, &Record::VACANT.encode(), cas);
                }
            }
        }
        for group in &mut self.groups {
            group.lanes.drain();
        }
        self.finishing = true;
        self.send_due(host, tracker, now);
        if self.pending() == 0 && self.calls.is_empty() {
            self.finishing = false;
            return true;
        }
        log::info!(
            "finishing: sending the last {} hits before the plugin goes away",
            self.pending()
        );
        false
    }

    /// Reads the leader record and takes or keeps the lead when it may.
    fn lead(&mut self, host: &impl Host, now: Duration) {
        if self.queue.is_none() {
            self.leading = true;
            return;
        }
        let was = self.leading;
        let mut record = host.shared_data(&self.leader_key);
        if record.is_none() {
            // The first VM here writes a vacant record; a claim then needs its CAS, so of VMs
            // racing for it exactly one wins.
            host.set_shared_data(&self.leader_key, &Record::VACANT.encode(), 0);
            record = host.shared_data(&self.leader_key);
        }
        self.leading = match record {
            Some((bytes, cas)) => {
                let current = Record::decode(&bytes).unwrap_or(Record::VACANT);
                match leader::decide(current, self.id, now) {
                    Step::Lead => {
                        let mine = Record {
                            holder: self.id,
                            heartbeat: now,
                        };
                        host.set_shared_data(&self.leader_key, &mine.encode(), cas)
                    }
                    Step::Follow => false,
                }
            }
            None => false,
        };
        if self.leading != was {
            let what = if self.leading { "is now" } else { "stopped" };
            log::info!("this VM {what} sending for this Envoy");
        }
    }

    /// Another VM leads and beat within the leader timeout.
    fn sender_alive(&self, host: &impl Host, now: Duration) -> bool {
        self.queue.is_some()
            && host
                .shared_data(&self.leader_key)
                .and_then(|(bytes, _)| Record::decode(&bytes))
                .is_some_and(|r| r.holder != 0 && leader::decide(r, 0, now) == Step::Follow)
    }

    /// Moves this worker's hits on: onto the shared queue, or, leading (or without a shared
    /// queue), with whatever the queue holds into its own lanes, in the order their requests
    /// arrived.
    fn collect(&mut self, host: &impl Host, tracker: &mut Tracker, now: Duration) {
        let mut entries = Vec::new();
        if let Some(queue) = self.queue.filter(|_| self.leading) {
            while let Some(message) = host.dequeue(queue) {
                entries.extend(outbox::decode(&message));
            }
        }
        if !tracker.outbox.is_empty() {
            match self.queue.filter(|_| !self.leading) {
                Some(queue) => {
                    let message = tracker.outbox.take_message();
                    if !host.enqueue(queue, &message) {
                        // The queue went away with its VMs: send these from here.
                        entries.extend(outbox::decode(&message));
                    }
                }
                None => entries.extend(tracker.outbox.take()),
            }
        }
        // Workers hand their hits over once a tick each: interleave them again by time.
        entries.sort_by_key(|(_, _, at, _)| *at);
        for (group, key, _, hit) in entries {
            self.keep(tracker, group, key, hit, now);
        }
    }

    /// Puts a hit in its group's lane, or drops and counts it when the lanes are full.
    fn keep(&mut self, tracker: &mut Tracker, group: usize, key: u32, hit: String, now: Duration) {
        if self
            .groups
            .get_mut(group)
            .is_some_and(|g| g.lanes.push(key, hit))
        {
            return;
        }
        tracker.queue_full(now);
    }

    /// A group whose token Matomo refused sends nothing (each call would be a failed login
    /// that gets this proxy's address blocked): its hits are dropped and counted.
    fn refuse_refused(&mut self, tracker: &mut Tracker, now: Duration) {
        for g in self.groups.iter_mut().filter(|g| g.token_refused) {
            let dropped = g.lanes.clear();
            if dropped == 0 {
                continue;
            }
            tracker.counters.dropped(Dropped::Refused, dropped as u64);
            if let Some(held) = tracker.drop_log.allow(now, dropped as u64) {
                log::error!(
                    "Matomo refused the token of {} at the last check: dropped {dropped} hits \
                     instead of sending them (each call would be a failed login that gets this \
                     proxy's address blocked); fix the token{}",
                    sites_named(&g.sites),
                    held_drops(held)
                );
            }
        }
    }

    /// At start (and again while Matomo cannot answer), one API call per token checks that its
    /// sites exist and the token may track them.
    fn check_sites(&mut self, host: &impl Host, tracker: &Tracker, now: Duration) {
        let s = &tracker.settings;
        for (i, g) in self.groups.iter_mut().enumerate() {
            let token = s.tokens.get(i).and_then(Option::as_ref);
            let (Some(due), Some(token)) = (g.site_check, token) else {
                continue;
            };
            let in_flight = self
                .calls
                .values()
                .any(|c| matches!(c, Call::SiteCheck { group } if *group == i));
            if now < due || in_flight {
                continue;
            }
            g.site_check = Some(now + SITE_CHECK_RETRY);
            g.site_checked = Some(now);
            let body = site_check_body(token, &g.sites);
            let form = "application/x-www-form-urlencoded";
            match host.post(post(s, &s.tracker.api_path, form, body.as_bytes())) {
                Ok(call) => {
                    self.calls.insert(call, Call::SiteCheck { group: i });
                }
                Err(reason) => {
                    g.checked = true;
                    log::warn!("could not check sites and token with Matomo: {reason}");
                }
            }
        }
    }

    /// What the check of a group's sites and token found, in one log line.
    fn checked(&mut self, group: usize, status: Option<u32>, body: &[u8], now: Duration) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.checked = true;
        let sites = sites_named(&g.sites);
        match read_site_check(status, body, &g.sites) {
            SiteCheck::Ok => {
                g.site_check = None;
                g.token_refused = false;
                g.site_wrong = false;
                let (be, it) = if g.sites.len() == 1 {
                    ("exists", "it")
                } else {
                    ("exist", "them")
                };
                log::info!("Matomo: {sites} {be} and the token may track {it}");
            }
            SiteCheck::TokenRefused(what) => {
                g.site_check = Some(now + SITE_RECHECK);
                g.token_refused = true;
                log::error!(
                    "{sites}: {what}; no hit is sent with it (checking again in {:?})",
                    SITE_RECHECK
                );
            }
            SiteCheck::Wrong(what) => {
                g.site_check = None;
                g.site_wrong = true;
                log::error!("Matomo: {what}");
            }
            SiteCheck::Unreachable(why) => log::warn!(
                "could not check {sites} and token with Matomo ({why}); trying again in \
                 {SITE_CHECK_RETRY:?}"
            ),
        }
    }

    /// Makes every call that is due. A call that cannot even start counts as a failure.
    fn send_due(&mut self, host: &impl Host, tracker: &mut Tracker, now: Duration) {
        for group in 0..self.groups.len() {
            let finishing = self.finishing;
            while let Some(send) = self
                .groups
                .get_mut(group)
                .filter(|g| g.checked || finishing)
                .and_then(|g| g.lanes.poll(now))
            {
                let c = &mut tracker.counters;
                c.add(Counter::BatchesSent, 1);
                if send.retry {
                    c.add(Counter::HitsRetried, send.hits as u64);
                }
                if send.after_timeout {
                    c.add(Counter::HitsResentAfterTimeout, send.hits as u64);
                }
                let s = &tracker.settings;
                let json = "application/json";
                match host.post(post(s, &s.tracker.path, json, send.body.as_bytes())) {
                    Ok(call) => {
                        let lane = send.lane;
                        self.calls.insert(
                            call,
                            Call::Bulk {
                                group,
                                lane,
                                started: now,
                            },
                        );
                    }
                    // That lane now waits for its backoff, so polling goes on.
                    Err(reason) => {
                        let failed = Answer::Failed {
                            reason,
                            timed_out: false,
                        };
                        self.settle(tracker, group, send.lane, failed, now);
                    }
                }
            }
        }
        if self.finishing && self.pending() == 0 && self.calls.is_empty() {
            self.finishing = false;
            host.done();
        }
    }

    /// Applies Matomo's answer to the call in flight in a lane: count, log (rate-limited).
    fn settle(
        &mut self,
        tracker: &mut Tracker,
        group: usize,
        lane: usize,
        answer: Answer,
        now: Duration,
    ) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let Some(outcome) = g.lanes.answer(lane, answer, now) else {
            return;
        };
        let c = &mut tracker.counters;
        let line = match outcome {
            Outcome::Delivered { hits, invalid } => {
                c.add(Counter::HitsSent, hits as u64);
                c.add(Counter::HitsInvalid, invalid);
                let line = format!("Matomo refused {invalid} of {hits} hits as invalid");
                (invalid > 0).then_some(line)
            }
            Outcome::WillRetry {
                hits,
                after,
                reason,
            } => {
                c.add(Counter::BatchesFailed, 1);
                Some(format!("{reason}; retrying {hits} hits in {after:?}"))
            }
            Outcome::Split { hits, reason } => {
                c.add(Counter::BatchesSplit, 1);
                let line = format!("{reason}; sending the {hits} hits again in two halves");
                Some(line)
            }
            Outcome::Dropped { hits, why, reason } => {
                c.add(Counter::BatchesFailed, 1);
                c.dropped(why, hits as u64);
                // Ask Matomo why (which site, which access), unless it was just asked.
                let recent = g
                    .site_checked
                    .is_some_and(|at| now.saturating_sub(at) < SITE_RECHECK);
                if why == Dropped::Invalid && g.has_token && g.site_check.is_none() && !recent {
                    g.site_check = Some(now);
                }
                if let Some(held) = tracker.drop_log.allow(now, hits as u64) {
                    log::error!(
                        "{}: {reason}; dropped {hits} hits{}",
                        sites_named(&g.sites),
                        held_drops(held)
                    );
                }
                return;
            }
        };
        let Some(line) = line else {
            return;
        };
        if let Some(held) = self.log.allow(now) {
            let sites = sites_named(&g.sites);
            log::warn!("{sites}: {line} ({held} similar lines held back)");
        }
    }
}

/// A POST to Matomo on `matomo_cluster`. No user-agent: Matomo gives a hit without `ua` the bulk
/// call's User-Agent, and a request that came without one must not be recorded as this filter's.
fn post<'a>(s: &'a Settings, path: &'a str, content_type: &'a str, body: &'a [u8]) -> Post<'a> {
    Post {
        cluster: &s.matomo_cluster,
        authority: &s.tracker.authority,
        path,
        content_type,
        body,
        timeout: s.http_timeout,
    }
}

/// The name of the shared queue (and leader record) of a config: the VMs of one Envoy that
/// share a plugin JSON share them.
pub fn queue_name(settings: &Settings) -> String {
    format!("matomo-proxy-wasm/{:016x}", settings.fingerprint)
}

/// `site 3`, or `sites 2, 3` for log lines.
fn sites_named(sites: &[u64]) -> String {
    let ids: Vec<String> = sites.iter().map(u64::to_string).collect();
    match ids.len() {
        1 => format!("site {}", ids.join("")),
        _ => format!("sites {}", ids.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    use super::*;
    use crate::request::RequestFacts;

    /// Envoy as the delivery sees it: shared data with CAS, shared queues, calls recorded.
    #[derive(Default)]
    struct FakeHost {
        data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        cas: Cell<u32>,
        queues: RefCell<HashMap<u32, VecDeque<Vec<u8>>>>,
        posts: RefCell<Vec<(u32, String, String)>>,
        done: Cell<bool>,
    }

    impl Host for FakeHost {
        fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.data.borrow().get(key).cloned()
        }
        fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> bool {
            let mut data = self.data.borrow_mut();
            if let Some((_, current)) = data.get(key) {
                if cas != 0 && cas != *current {
                    return false;
                }
            }
            self.cas.set(self.cas.get() + 1);
            data.insert(key.to_owned(), (value.to_vec(), self.cas.get()));
            true
        }
        fn enqueue(&self, queue: u32, message: &[u8]) -> bool {
            self.queues
                .borrow_mut()
                .entry(queue)
                .or_default()
                .push_back(message.to_vec());
            true
        }
        fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
            self.queues.borrow_mut().get_mut(&queue)?.pop_front()
        }
        fn post(&self, post: Post) -> Result<u32, String> {
            let mut posts = self.posts.borrow_mut();
            let token = posts.len() as u32 + 1;
            let body = String::from_utf8_lossy(post.body).into_owned();
            posts.push((token, post.path.to_owned(), body));
            Ok(token)
        }
        fn done(&self) {
            self.done.set(true);
        }
    }

    impl FakeHost {
        /// The calls made since the last look: (token, path, body).
        fn take_posts(&self) -> Vec<(u32, String, String)> {
            std::mem::take(&mut *self.posts.borrow_mut())
        }
    }

    /// One VM: its tracker and its delivery.
    struct Vm {
        tracker: Tracker,
        delivery: Delivery,
    }

    const CONFIG: &str =
        r#"{"matomo_url":"http://m","id_site":1,"flush_interval":1,"batch_size":100}"#;

    fn vm(json: &str, id: u64) -> Vm {
        let settings = Settings::from_json(json.as_bytes()).unwrap();
        let delivery = Delivery::new(&settings, Some(7), id, Duration::ZERO);
        Vm {
            tracker: Tracker::new(settings, id),
            delivery,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    impl Vm {
        fn request(&mut self, path: &str, ip: &str) {
            self.request_at(path, ip, 0.0);
        }
        fn request_at(&mut self, path: &str, ip: &str, at: f64) {
            let facts = RequestFacts {
                method: "GET".into(),
                authority: "shop.example".into(),
                path: path.into(),
                status: 200,
                content_type: Some("text/html".into()),
                client_ip: Some(ip.into()),
                user_agent: Some("Firefox".into()),
                ..RequestFacts::default()
            };
            self.tracker.track(&facts, secs(at));
        }
        fn tick(&mut self, host: &FakeHost, now: f64) {
            self.delivery.tick(host, &mut self.tracker, secs(now));
        }
        fn answer(&mut self, host: &FakeHost, token: u32, body: &str, now: f64) {
            let d = &mut self.delivery;
            d.answer(
                host,
                &mut self.tracker,
                token,
                Some(200),
                body.as_bytes(),
                secs(now),
            );
        }
    }

    fn paths(body: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let h = h.as_str().unwrap();
                let url = h.split("&url=").nth(1).unwrap().split('&').next().unwrap();
                crate::text::percent_decode_lossy(url)
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    const OK: &str = r#"{"status":"success","tracked":1,"invalid":0}"#;

    #[test]
    fn one_vm_sends_for_all_and_the_others_hand_their_hits_over_the_shared_queue() {
        let host = FakeHost::default();
        let (mut a, mut b) = (vm(CONFIG, 1), vm(CONFIG, 2));
        a.tick(&host, 0.0);
        b.tick(&host, 0.0);
        assert!(a.delivery.leading() && !b.delivery.leading());
        // One person, whose requests two workers served, one after the other.
        a.request_at("/a1", "10.0.0.1", 0.1);
        b.request_at("/b1", "10.0.0.1", 0.2);
        b.request_at("/b2", "10.0.0.1", 0.3);
        b.tick(&host, 0.5);
        assert!(
            host.take_posts().is_empty(),
            "a follower never calls Matomo"
        );
        a.request_at("/a2", "10.0.0.1", 0.6);
        a.tick(&host, 1.1);
        let posts = host.take_posts();
        assert_eq!(posts.len(), 1, "one person's hits: one lane, one call");
        assert_eq!(
            paths(&posts[0].2),
            ["a1", "b1", "b2", "a2"],
            "in the order they happened"
        );
        a.answer(&host, posts[0].0, OK, 1.2);
        assert_eq!(a.delivery.pending(), 0);
    }

    #[test]
    fn when_the_sender_stops_beating_another_takes_over_and_drains_the_queue() {
        let host = FakeHost::default();
        let (mut a, mut b) = (vm(CONFIG, 1), vm(CONFIG, 2));
        a.tick(&host, 0.0);
        b.tick(&host, 0.0);
        b.request("/b1", "10.0.0.1");
        b.tick(&host, 1.0);
        assert!(!b.delivery.leading());
        // A's VM crashed: it ticks no more. Two seconds on, B takes the lead.
        b.tick(&host, 1.9);
        assert!(
            !b.delivery.leading(),
            "not yet: A beat at 0.0, and TIMEOUT is 2 s"
        );
        b.tick(&host, 2.1);
        assert!(b.delivery.leading());
        b.tick(&host, 3.2);
        let posts = host.take_posts();
        assert_eq!(posts.len(), 1);
        assert_eq!(paths(&posts[0].2), ["b1"]);
    }

    #[test]
    fn different_people_travel_in_calls_side_by_side_and_one_person_in_one_lane() {
        let host = FakeHost::default();
        let mut a = vm(CONFIG, 1);
        a.tick(&host, 0.0);
        for (i, ip) in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
            .iter()
            .enumerate()
        {
            a.request(&format!("/p{i}-1"), ip);
            a.request(&format!("/p{i}-2"), ip);
        }
        a.tick(&host, 1.1);
        let posts = host.take_posts();
        assert!(posts.len() > 1, "several lanes are in flight at once");
        assert!(posts.len() <= 4, "at most concurrent_calls (4)");
        let mut seen = Vec::new();
        for (_, _, body) in &posts {
            let p = paths(body);
            for person in 0..5 {
                let mine: Vec<_> = p
                    .iter()
                    .filter(|x| x.starts_with(&format!("p{person}-")))
                    .collect();
                if !mine.is_empty() {
                    assert_eq!(
                        mine,
                        [&format!("p{person}-1"), &format!("p{person}-2")],
                        "in order, together"
                    );
                    seen.push(person);
                }
            }
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            [0, 1, 2, 3, 4],
            "every person's hits went, each in exactly one call"
        );
    }

    #[test]
    fn with_a_token_the_sites_are_checked_first_and_a_refused_token_is_never_sent() {
        let host = FakeHost::default();
        let json =
            r#"{"matomo_url":"http://m/sub","id_site":3,"token_auth":"t","flush_interval":1}"#;
        let mut a = vm(json, 1);
        a.tick(&host, 0.0);
        let check = host.take_posts();
        assert_eq!(check.len(), 1);
        assert_eq!(check[0].1, "/sub/index.php");
        assert!(check[0].2.contains("API.getBulkRequest") && check[0].2.contains("idSite%3D3"));
        let d = &mut a.delivery;
        d.answer(
            &host,
            &mut a.tracker,
            check[0].0,
            Some(401),
            b"<html>",
            secs(0.1),
        );
        a.request("/x", "10.0.0.1");
        a.tick(&host, 1.5);
        assert!(
            host.take_posts().is_empty(),
            "nothing sent with a refused token"
        );
        let counts: Vec<_> = a.tracker.counters.drain().collect();
        assert!(
            counts.contains(&(Counter::HitsDroppedRefused, 1)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_400_for_a_site_the_check_found_wrong_drops_the_batch_without_halving_it() {
        let host = FakeHost::default();
        let json = r#"{"matomo_url":"http://m","id_site":9,"token_auth":"t","flush_interval":1}"#;
        let mut a = vm(json, 1);
        a.tick(&host, 0.0);
        let check = host.take_posts();
        let unknown = r#"[{"value":true},[],[],{"result":"error","message":"unknown"}]"#;
        a.answer(&host, check[0].0, unknown, 0.1);
        for i in 0..8 {
            a.request(&format!("/p{i}"), "10.0.0.1");
        }
        a.tick(&host, 1.5);
        let posts = host.take_posts();
        assert_eq!(posts.len(), 1);
        let d = &mut a.delivery;
        d.answer(&host, &mut a.tracker, posts[0].0, Some(400), b"", secs(1.6));
        a.tick(&host, 3.0);
        assert!(host.take_posts().is_empty(), "no halves");
        let counts: Vec<_> = a.tracker.counters.drain().collect();
        assert!(
            counts.contains(&(Counter::HitsDroppedInvalid, 8)),
            "{counts:?}"
        );
        assert!(!counts.iter().any(|(c, _)| *c == Counter::BatchesSplit));
    }

    #[test]
    fn sites_with_their_own_tokens_have_their_own_calls() {
        let host = FakeHost::default();
        let json = r#"{"matomo_url":"http://m","flush_interval":1,"sites":[
            {"hosts":["a.example"],"id_site":1,"token_auth":"ta"},
            {"hosts":["b.example"],"id_site":2,"token_auth":"tb"},
            {"hosts":["c.example"],"id_site":3,"token_auth":"ta"}]}"#;
        let mut a = vm(json, 1);
        a.tick(&host, 0.0);
        let checks = host.take_posts();
        assert_eq!(checks.len(), 2, "one check per token");
        for (token, _, _) in checks {
            let ok = r#"[{"value":true},[],[],{"idsite":1},{"idsite":3}]"#;
            a.answer(&host, token, ok, 0.1);
        }
        for host_name in ["a.example", "b.example", "c.example"] {
            let facts = RequestFacts {
                method: "GET".into(),
                authority: host_name.into(),
                path: format!("/{host_name}"),
                status: 200,
                content_type: Some("text/html".into()),
                ..RequestFacts::default()
            };
            a.tracker.track(&facts, Duration::ZERO);
        }
        a.tick(&host, 1.5);
        let posts = host.take_posts();
        assert_eq!(posts.len(), 2);
        let by_token: HashMap<String, Vec<String>> = posts
            .iter()
            .map(|(_, _, body)| {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                (v["token_auth"].as_str().unwrap().to_owned(), paths(body))
            })
            .collect();
        assert_eq!(by_token["ta"], ["a.example", "c.example"]);
        assert_eq!(by_token["tb"], ["b.example"]);
    }

    #[test]
    fn going_away_a_worker_hands_its_hits_to_the_sender_which_sends_everything() {
        let host = FakeHost::default();
        let (mut a, mut b) = (vm(CONFIG, 1), vm(CONFIG, 2));
        a.tick(&host, 0.0);
        b.tick(&host, 0.0);
        b.request("/b1", "10.0.0.1");
        a.request("/a1", "10.0.0.2");
        assert!(
            b.delivery.finish(&host, &mut b.tracker, secs(0.5)),
            "B holds nothing itself"
        );
        assert!(
            !a.delivery.finish(&host, &mut a.tracker, secs(0.6)),
            "A waits for its calls"
        );
        let posts = host.take_posts();
        let mut sent: Vec<_> = posts.iter().flat_map(|(_, _, body)| paths(body)).collect();
        sent.sort();
        assert_eq!(sent, ["a1", "b1"]);
        assert!(!host.done.get());
        for (token, _, _) in posts {
            a.answer(&host, token, OK, 0.7);
        }
        assert!(
            host.done.get(),
            "the host is told once the last call is answered"
        );
    }
}
