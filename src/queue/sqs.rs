//! [`Queue`] over Amazon SQS (and moto's SQS in tests): ReceiveMessage with long
//! polling and `ApproximateReceiveCount`, SendMessageBatch and DeleteMessageBatch
//! with their per-entry results, ChangeMessageVisibility; and, when connecting,
//! the queue's visibility timeout and redrive policy (GetQueueAttributes), from
//! which the dead-letter queue can be found.
//!
//! It retries nothing itself beyond what the AWS SDK's standard retry mode does:
//! callers decide what a failure means.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};

use super::{EntryFailure, OutgoingMessage, Queue, QueueError, QueueSettings, ReceivedMessage};

/// One SQS queue, by URL, with the settings read when connecting.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
    settings: QueueSettings,
    dead_letter_arn: Option<String>,
}

fn service_error<E>(operation: &'static str, queue: &str, e: E) -> QueueError
where
    E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + 'static,
{
    QueueError::Service {
        operation,
        queue: queue.to_owned(),
        detail: aws_error_text(&e),
    }
}

/// A request this process could not even build (a missing required field).
fn build_error(
    operation: &'static str,
    queue: &str,
    e: aws_sdk_sqs::error::BuildError,
) -> QueueError {
    QueueError::Service {
        operation,
        queue: queue.to_owned(),
        detail: causes(&e),
    }
}

/// One line for an AWS SDK error (S3 or SQS): the service's error code and
/// message when the service answered (e.g. `NoSuchKey: The specified key does
/// not exist.`), else the error's causes (timeouts, connection failures). The
/// SDK's own rendering of a service error carries the raw response, which is
/// noise in a log line.
pub fn aws_error_text<E>(e: &E) -> String
where
    E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + 'static,
{
    match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or("(no message)")),
        None => causes(e),
    }
}

/// `e` and its sources, joined with ": " (the SDK's `DisplayErrorContext` adds
/// the error's `Debug`, raw response included).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// The AWS SDK configuration from its own sources (`AWS_REGION`,
/// `AWS_ENDPOINT_URL`, the credential chain), as the SDK documents them.
pub async fn load_aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

impl SqsQueue {
    /// Connects to the queue at `url`, reading `VisibilityTimeout` and
    /// `RedrivePolicy` (AWS SQS API, GetQueueAttributes). Errors:
    /// [`QueueError::Service`] when the queue cannot be read,
    /// [`QueueError::Config`] when its redrive policy is not the documented JSON.
    pub async fn connect(client: Client, url: impl Into<String>) -> Result<Self, QueueError> {
        let url = url.into();
        let out = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| service_error("GetQueueAttributes", &url, e))?;
        let attrs = out.attributes().cloned().unwrap_or_default();
        let visibility = attrs
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(30);
        let (max_receive_count, dead_letter_arn) = match attrs
            .get(&QueueAttributeName::RedrivePolicy)
        {
            None => (None, None),
            Some(policy) => parse_redrive_policy(policy).map_err(|detail| QueueError::Config {
                queue: url.clone(),
                detail,
            })?,
        };
        Ok(Self {
            client,
            url,
            settings: QueueSettings {
                visibility_timeout: Duration::from_secs(visibility),
                max_receive_count,
            },
            dead_letter_arn,
        })
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Checks the queue is reachable (GetQueueAttributes), for readiness probes.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| service_error("GetQueueAttributes", &self.url, e))
    }

    /// The dead-letter queue named by this queue's redrive policy, if any
    /// (GetQueueUrl on the ARN's queue name and account).
    pub async fn dead_letter_queue(&self) -> Result<Option<SqsQueue>, QueueError> {
        let Some(arn) = &self.dead_letter_arn else {
            return Ok(None);
        };
        // arn:aws:sqs:region:account:name
        let parts: Vec<&str> = arn.split(':').collect();
        let (Some(account), Some(name)) = (parts.get(4), parts.get(5)) else {
            return Err(QueueError::Config {
                queue: self.url.clone(),
                detail: format!("deadLetterTargetArn {arn:?} is not an SQS ARN"),
            });
        };
        let out = self
            .client
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| service_error("GetQueueUrl", arn, e))?;
        let Some(url) = out.queue_url() else {
            return Err(QueueError::Config {
                queue: self.url.clone(),
                detail: format!("no URL for dead-letter queue {arn}"),
            });
        };
        Self::connect(self.client.clone(), url).await.map(Some)
    }
}

/// `{"deadLetterTargetArn":"arn:…","maxReceiveCount":5}`; moto and older
/// consoles write the count as a string.
fn parse_redrive_policy(policy: &str) -> Result<(Option<u32>, Option<String>), String> {
    let v: serde_json::Value =
        serde_json::from_str(policy).map_err(|e| format!("RedrivePolicy is not JSON: {e}"))?;
    let count = match &v["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .and_then(|n| u32::try_from(n).ok())
    .ok_or_else(|| format!("RedrivePolicy has no usable maxReceiveCount: {policy}"))?;
    let arn = v["deadLetterTargetArn"].as_str().map(str::to_owned);
    Ok((Some(count), arn))
}

fn failures(failed: &[BatchResultErrorEntry]) -> Vec<EntryFailure> {
    failed
        .iter()
        .filter_map(|f| {
            Some(EntryFailure {
                index: f.id().parse().ok()?,
                code: f.code().to_owned(),
                message: f.message().unwrap_or_default().to_owned(),
                sender_fault: f.sender_fault(),
            })
        })
        .collect()
}

impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.url
    }

    fn settings(&self) -> QueueSettings {
        self.settings
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = max.clamp(1, super::MAX_BATCH as u32);
        let wait = wait.min(super::MAX_WAIT).as_secs();
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max as i32)
            .wait_time_seconds(wait as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| service_error("ReceiveMessage", &self.url, e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                // Epoch milliseconds (AWS SQS API, ReceiveMessage, SentTimestamp).
                let sent_at = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(chrono::DateTime::from_timestamp_millis);
                let attributes: BTreeMap<String, String> = m
                    .message_attributes()
                    .map(|attrs| {
                        attrs
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(ReceivedMessage {
                    message_id: m.message_id()?.to_owned(),
                    receipt_handle: m.receipt_handle()?.to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    receive_count,
                    attributes,
                    sent_at,
                })
            })
            .collect())
    }

    async fn send_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<EntryFailure>, QueueError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let mut attributes = HashMap::new();
            for (k, v) in &m.attributes {
                // SQS refuses empty attribute values.
                if v.is_empty() {
                    continue;
                }
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map_err(|e| build_error("SendMessageBatch", &self.url, e))?;
                attributes.insert(k.clone(), value);
            }
            let delay = m.delay.min(super::MAX_DELAY).as_secs() as i32;
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&m.body)
                .delay_seconds(delay)
                .set_message_attributes((!attributes.is_empty()).then_some(attributes))
                .build()
                .map_err(|e| build_error("SendMessageBatch", &self.url, e))?;
            entries.push(entry);
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| service_error("SendMessageBatch", &self.url, e))?;
        Ok(failures(out.failed()))
    }

    async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<EntryFailure>, QueueError> {
        if receipt_handles.is_empty() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::with_capacity(receipt_handles.len());
        for (i, r) in receipt_handles.iter().enumerate() {
            entries.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
                    .map_err(|e| build_error("DeleteMessageBatch", &self.url, e))?,
            );
        }
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| service_error("DeleteMessageBatch", &self.url, e))?;
        Ok(failures(out.failed()))
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let secs = timeout.min(super::MAX_VISIBILITY).as_secs() as i32;
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| service_error("ChangeMessageVisibility", &self.url, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policy_forms() {
        assert_eq!(
            parse_redrive_policy(
                r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:d","maxReceiveCount":5}"#
            ),
            Ok((Some(5), Some("arn:aws:sqs:us-east-1:1:d".into())))
        );
        assert_eq!(
            parse_redrive_policy(r#"{"deadLetterTargetArn":"a","maxReceiveCount":"3"}"#),
            Ok((Some(3), Some("a".into())))
        );
        assert!(parse_redrive_policy("nope").is_err());
        assert!(parse_redrive_policy("{}").is_err());
    }
}
