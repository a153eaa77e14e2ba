//! The errors of the AMQP layer: [`AmqpError`] (the client's error, kept whole) and
//! [`PublishError`] (why a publish got no positive confirm).

use std::time::Duration;

/// An error of the AMQP client (a refused operation, a closed channel, a lost connection).
///
/// It shows as the client's error and keeps it (with its causes) rather than its text, so that
/// logs and `webhookctl`'s error chains read as they always did; the broker's reply code is
/// asked through [`AmqpError::reply_code`] and the predicates.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct AmqpError(#[from] lapin::Error);

impl AmqpError {
    /// A channel that was closed (by us, by the broker, or with its connection) before `operation`.
    pub(crate) fn channel_closed(operation: &'static str) -> Self {
        Self(lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, operation).into())
    }

    /// The broker's reply code when it refused the operation (404 NOT_FOUND, 403
    /// ACCESS_REFUSED, 406 PRECONDITION_FAILED, …).
    pub fn reply_code(&self) -> Option<u16> {
        match self.0.kind() {
            lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
            _ => None,
        }
    }

    /// The broker's 404 NOT_FOUND: a queue or exchange that does not exist (a passive declare,
    /// a publish to a missing exchange).
    pub fn is_not_found(&self) -> bool {
        self.reply_code() == Some(404) || self.0.to_string().contains("NOT_FOUND")
    }

    /// The broker's 403 ACCESS_REFUSED (e.g. an exclusive consumer that is not alone).
    pub fn is_access_refused(&self) -> bool {
        self.reply_code() == Some(403)
    }
}

/// Why a publish did not get a positive confirm. None of these mean the message is queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ is not connected (reconnecting in the background)")]
    Unavailable,
    #[error("RabbitMQ returned the message as unroutable ({0}): is the topology declared?")]
    Returned(String),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] AmqpError),
}

impl From<lapin::Error> for PublishError {
    fn from(e: lapin::Error) -> Self {
        Self::Amqp(e.into())
    }
}
