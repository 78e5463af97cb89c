//! The neighbor finite state machine of RFC 4271 §8, as a pure function.
//!
//! [`fsm_event`] takes the current [`State`] and an [`Event`] and returns
//! the next state with the [`Action`]s to carry out, in order. It does no IO
//! and keeps no timers; [`crate::Session`] executes the actions. Optional
//! session attributes (DelayOpen, DampPeerOscillations, collision
//! detection with a second connection) are not implemented, so the events
//! that only they raise are absent.

use crate::error::{DecodeError, code};
use crate::message::Notification;

/// RFC 4271 §8.2.2 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// How the session gets its TCP connection (RFC 4271 §8.1.1 PassiveTcpEstablishment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Initiate the connection (and accept one while waiting).
    #[default]
    Active,
    /// Only wait for the peer to connect.
    Passive,
}

/// RFC 4271 §8.1 events (numbers in the comments), those this engine raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// 1 ManualStart / 4 ManualStart_with_PassiveTcpEstablishment (by mode).
    ManualStart,
    /// 2 ManualStop.
    ManualStop,
    /// 3 AutomaticStart / 5 (by mode): restart after the idle hold time.
    AutomaticStart,
    /// 8 AutomaticStop: local policy ends the session (e.g. the prefix
    /// limit, RFC 4486 Cease 6/1), sending this NOTIFICATION.
    AutomaticStop(Notification),
    /// 9 ConnectRetryTimer_Expires.
    ConnectRetryTimerExpires,
    /// 10 HoldTimer_Expires.
    HoldTimerExpires,
    /// 11 KeepaliveTimer_Expires.
    KeepaliveTimerExpires,
    /// 16 Tcp_CR_Acked / 17 TcpConnectionConfirmed.
    TcpConnectionConfirmed,
    /// 18 TcpConnectionFails.
    TcpConnectionFails,
    /// 19 BGPOpen: an OPEN that passed every check.
    BgpOpen,
    /// 23 OpenCollisionDump: RFC 4271 §6.8 collision detection chose the
    /// other connection with this peer; this one is closed.
    OpenCollisionDump,
    /// 21 BGPHeaderErr / 22 BGPOpenMsgErr / 28 UpdateMsgErr: a decode
    /// error that resets the session.
    MessageError(DecodeError),
    /// 24 NotifMsgVerErr: NOTIFICATION with Unsupported Version Number.
    NotifMsgVerErr,
    /// 25 NotifMsg.
    NotifMsg(Notification),
    /// 26 KeepAliveMsg.
    KeepAliveMsg,
    /// 27 UpdateMsg.
    UpdateMsg,
    /// ROUTE-REFRESH received (RFC 2918 §4).
    RouteRefreshMsg,
}

/// Work for the session to do on a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the driver to open a TCP connection to the peer.
    Connect,
    /// Drop the TCP connection (after writing anything queued).
    Close,
    SendOpen,
    SendKeepalive,
    SendNotification(Notification),
    /// Start (or restart) the ConnectRetry timer.
    ArmConnectRetry,
    /// RFC 4271 §8.2.2: "a large value" while waiting for the OPEN.
    ArmHoldLarge,
    /// Hold timer with the negotiated hold time (no-op when it is 0).
    ArmHold,
    /// Keepalive timer with the negotiated interval (no-op when hold is 0).
    ArmKeepalive,
    /// Stop every timer (ConnectRetry, Hold, Keepalive).
    StopTimers,
    StopConnectRetry,
    /// Entered Established: report it and send our routes.
    Established,
    /// Process the UPDATE that raised the event.
    ProcessUpdate,
    /// Resend our routes (ROUTE-REFRESH received).
    ResendRoutes,
    /// The session went to Idle from a connected state: withdraw all routes
    /// learned from the peer and report why.
    Down,
}

/// RFC 4271 §8.2.2: the next state and the actions, for one event.
pub fn fsm_event(state: State, event: &Event, mode: Mode) -> (State, Vec<Action>) {
    use Action as A;
    use Event as E;
    use State as S;
    // Going back to Idle from a connection-carrying state.
    let fail = |send: Option<Notification>| {
        let mut a = Vec::with_capacity(4);
        if let Some(n) = send {
            a.push(A::SendNotification(n));
        }
        a.extend([A::StopTimers, A::Close, A::Down]);
        (S::Idle, a)
    };
    let cease = || Notification::new(code::CEASE, 2);
    let hold_expired = || Notification::new(code::HOLD_TIMER_EXPIRED, 0);
    let fsm_error = |subcode| Notification::new(code::FSM, subcode);
    match (state, event) {
        // Idle: only a start leaves it; everything else is ignored, and an
        // incoming connection is refused (RFC 4271 §8.2.2 Idle state).
        (S::Idle, E::ManualStart | E::AutomaticStart) => match mode {
            Mode::Active => (S::Connect, vec![A::ArmConnectRetry, A::Connect]),
            Mode::Passive => (S::Active, vec![A::ArmConnectRetry]),
        },
        (S::Idle, E::TcpConnectionConfirmed) => (S::Idle, vec![A::Close]),
        (S::Idle, _) => (S::Idle, vec![]),

        (S::Connect | S::Active, E::ManualStop | E::AutomaticStop(_)) => {
            (S::Idle, vec![A::StopTimers, A::Close])
        }
        (S::Connect | S::Active, E::ManualStart | E::AutomaticStart) => (state, vec![]),
        (S::Connect | S::Active, E::TcpConnectionConfirmed) => (
            S::OpenSent,
            vec![A::StopConnectRetry, A::SendOpen, A::ArmHoldLarge],
        ),
        // Connect: the attempt timed out; drop it and try again.
        (S::Connect, E::ConnectRetryTimerExpires) => {
            (S::Connect, vec![A::Close, A::ArmConnectRetry, A::Connect])
        }
        (S::Connect, E::TcpConnectionFails) => (S::Active, vec![A::ArmConnectRetry]),
        // Active: time to try an outgoing connection again, unless passive.
        (S::Active, E::ConnectRetryTimerExpires) => match mode {
            Mode::Active => (S::Connect, vec![A::ArmConnectRetry, A::Connect]),
            Mode::Passive => (S::Active, vec![A::ArmConnectRetry]),
        },
        (S::Active, E::TcpConnectionFails) => (S::Active, vec![A::ArmConnectRetry]),
        // No connection to dump.
        (S::Connect | S::Active, E::OpenCollisionDump) => (state, vec![]),
        // A BGP message or a timer we never armed before a connection exists
        // cannot happen through Session; RFC 4271 says go to Idle.
        (S::Connect | S::Active, _) => (S::Idle, vec![A::StopTimers, A::Close]),

        (S::OpenSent | S::OpenConfirm | S::Established, E::ManualStop) => fail(Some(cease())),
        (S::OpenSent | S::OpenConfirm | S::Established, E::AutomaticStop(n)) => {
            fail(Some(n.clone()))
        }
        (S::OpenSent | S::OpenConfirm | S::Established, E::ManualStart | E::AutomaticStart) => {
            (state, vec![])
        }
        // RFC 4271 §6.8 / §8.2.2: Cease, subcode 7 Connection Collision
        // Resolution (RFC 4486 §4).
        (S::OpenSent | S::OpenConfirm | S::Established, E::OpenCollisionDump) => {
            fail(Some(Notification::new(code::CEASE, 7)))
        }
        (S::OpenSent | S::OpenConfirm | S::Established, E::HoldTimerExpires) => {
            fail(Some(hold_expired()))
        }
        (S::OpenSent | S::OpenConfirm | S::Established, E::MessageError(e)) => {
            fail(Some(e.notification()))
        }
        (S::OpenSent | S::OpenConfirm | S::Established, E::NotifMsg(_) | E::NotifMsgVerErr) => {
            fail(None)
        }
        // RFC 4271 §8.2.2 OpenSent: TcpConnectionFails goes to Active; as
        // we do not listen ourselves, that is where the driver may hand
        // us the next connection.
        (S::OpenSent, E::TcpConnectionFails) => (
            S::Active,
            vec![A::StopTimers, A::Close, A::ArmConnectRetry, A::Down],
        ),
        (S::OpenConfirm | S::Established, E::TcpConnectionFails) => fail(None),

        (S::OpenSent, E::BgpOpen) => (
            S::OpenConfirm,
            vec![
                A::StopConnectRetry,
                A::SendKeepalive,
                A::ArmKeepalive,
                A::ArmHold,
            ],
        ),
        // RFC 6608: unexpected messages get an FSM error with the state.
        (S::OpenSent, _) => fail(Some(fsm_error(1))),

        (S::OpenConfirm | S::Established, E::KeepaliveTimerExpires) => {
            (state, vec![A::SendKeepalive, A::ArmKeepalive])
        }
        (S::OpenConfirm, E::KeepAliveMsg) => (S::Established, vec![A::ArmHold, A::Established]),
        (S::OpenConfirm, _) => fail(Some(fsm_error(2))),

        (S::Established, E::KeepAliveMsg) => (S::Established, vec![A::ArmHold]),
        (S::Established, E::UpdateMsg) => (S::Established, vec![A::ArmHold, A::ProcessUpdate]),
        (S::Established, E::RouteRefreshMsg) => (S::Established, vec![A::ArmHold, A::ResendRoutes]),
        (S::Established, _) => fail(Some(fsm_error(3))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(s: State, e: Event) -> State {
        fsm_event(s, &e, Mode::Active).0
    }

    #[test]
    fn happy_path_active() {
        let (s, a) = fsm_event(State::Idle, &Event::ManualStart, Mode::Active);
        assert_eq!(
            (s, a),
            (
                State::Connect,
                vec![Action::ArmConnectRetry, Action::Connect]
            )
        );
        let (s, a) = fsm_event(s, &Event::TcpConnectionConfirmed, Mode::Active);
        assert_eq!(s, State::OpenSent);
        assert!(a.contains(&Action::SendOpen));
        let (s, a) = fsm_event(s, &Event::BgpOpen, Mode::Active);
        assert_eq!(s, State::OpenConfirm);
        assert_eq!(a[1], Action::SendKeepalive);
        let (s, a) = fsm_event(s, &Event::KeepAliveMsg, Mode::Active);
        assert_eq!(s, State::Established);
        assert!(a.contains(&Action::Established));
        assert_eq!(next(s, Event::UpdateMsg), State::Established);
    }

    #[test]
    fn passive_never_connects() {
        let (s, a) = fsm_event(State::Idle, &Event::ManualStart, Mode::Passive);
        assert_eq!(s, State::Active);
        assert!(!a.contains(&Action::Connect));
        let (s, a) = fsm_event(s, &Event::ConnectRetryTimerExpires, Mode::Passive);
        assert_eq!(s, State::Active);
        assert!(!a.contains(&Action::Connect));
        assert_eq!(
            fsm_event(s, &Event::ConnectRetryTimerExpires, Mode::Active).0,
            State::Connect
        );
    }

    #[test]
    fn errors_go_idle_with_the_right_notification() {
        let (s, a) = fsm_event(State::Established, &Event::HoldTimerExpires, Mode::Active);
        assert_eq!(s, State::Idle);
        assert_eq!(a[0], Action::SendNotification(Notification::new(4, 0)));
        assert!(a.contains(&Action::Down));
        // RFC 6608 subcodes per state.
        for (st, sub) in [
            (State::OpenSent, 1),
            (State::OpenConfirm, 2),
            (State::Established, 3),
        ] {
            let ev = if st == State::OpenSent {
                Event::KeepAliveMsg
            } else {
                Event::BgpOpen
            };
            let (s, a) = fsm_event(st, &ev, Mode::Active);
            assert_eq!(s, State::Idle);
            assert_eq!(a[0], Action::SendNotification(Notification::new(5, sub)));
        }
        let (_, a) = fsm_event(State::OpenConfirm, &Event::ManualStop, Mode::Active);
        assert_eq!(a[0], Action::SendNotification(Notification::new(6, 2)));
        let (s, a) = fsm_event(
            State::Established,
            &Event::NotifMsg(Notification::new(6, 2)),
            Mode::Active,
        );
        assert_eq!(s, State::Idle);
        assert!(!a.iter().any(|a| matches!(a, Action::SendNotification(_))));
    }

    #[test]
    fn idle_refuses_connections_and_ignores_the_rest() {
        assert_eq!(
            fsm_event(State::Idle, &Event::TcpConnectionConfirmed, Mode::Active).1,
            [Action::Close]
        );
        assert_eq!(next(State::Idle, Event::HoldTimerExpires), State::Idle);
        assert_eq!(next(State::Idle, Event::KeepAliveMsg), State::Idle);
    }

    #[test]
    fn connect_failures_and_retries() {
        assert_eq!(
            next(State::Connect, Event::TcpConnectionFails),
            State::Active
        );
        let (s, a) = fsm_event(
            State::Connect,
            &Event::ConnectRetryTimerExpires,
            Mode::Active,
        );
        assert_eq!(s, State::Connect);
        assert!(a.contains(&Action::Connect));
        assert_eq!(
            next(State::OpenSent, Event::TcpConnectionFails),
            State::Active
        );
        assert_eq!(
            next(State::Established, Event::TcpConnectionFails),
            State::Idle
        );
    }
}
