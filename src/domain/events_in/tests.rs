use super::*;

const VALIDATION: &[u8] =
    include_bytes!("../../../tests/fixtures/events/eventgrid-subscription-validation.json");
const GALLERY_WRITE: &[u8] =
    include_bytes!("../../../tests/fixtures/events/eventgrid-resource-write-gallery-version.json");
const BLOB_CREATED: &[u8] =
    include_bytes!("../../../tests/fixtures/events/eventgrid-blob-created.json");
const KILN_EVENT_GRID: &[u8] =
    include_bytes!("../../../tests/fixtures/events/eventgrid-kiln-base-image-updated.json");
const KILN_CLOUDEVENT: &[u8] =
    include_bytes!("../../../tests/fixtures/events/cloudevents-kiln-base-image-updated.json");
const KILN_CLOUDEVENTS_BATCH: &[u8] =
    include_bytes!("../../../tests/fixtures/events/cloudevents-kiln-batch.json");

const VERSION_ID: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/corpGallery/images/ubuntu-2404-base/versions/1.4.0";
const DEFINITION_ID: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/corpGallery/images/ubuntu-2404-base";

fn events(body: &[u8], aeg: Option<&str>, content_type: Option<&str>) -> Vec<InboundEvent> {
    match parse(body, aeg, content_type) {
        Ok(Inbound::Events(events)) => events,
        other => panic!("expected events, got {other:?}"),
    }
}

fn error(body: &str) -> String {
    parse(body.as_bytes(), Some("Notification"), None).expect_err("a malformed delivery")
}

/// An Event Grid delivery of one event with the given fields.
fn event_grid(event_type: &str, data: Value) -> String {
    serde_json::json!([{
        "id": "e1", "topic": "/subscriptions/s", "subject": "", "eventType": event_type,
        "eventTime": "2026-05-04T06:00:00Z", "data": data, "dataVersion": "1"
    }])
    .to_string()
}

fn kiln_event(data: Value) -> String {
    event_grid(BASE_IMAGE_UPDATED, data)
}

#[test]
fn a_subscription_validation_is_a_handshake_with_its_code() {
    let want = Inbound::Handshake {
        validation_code: "0c5a9e7d-4b1f-4e6a-8d2c-3f9b7a1e6c54".into(),
    };
    assert_eq!(
        parse(
            VALIDATION,
            Some("SubscriptionValidation"),
            Some("application/json")
        ),
        Ok(want.clone())
    );
    // Without the header (the event posted by hand), the content decides.
    assert_eq!(parse(VALIDATION, None, None), Ok(want));
}

#[test]
fn the_handshake_response_echoes_the_code() {
    assert_eq!(
        handshake_response("512d38b6"),
        serde_json::json!({"validationResponse": "512d38b6"})
    );
}

#[test]
fn a_validation_header_without_a_validation_event_is_an_error() {
    assert_eq!(
        parse(BLOB_CREATED, Some("SubscriptionValidation"), None),
        Err("aeg-event-type is SubscriptionValidation but no Microsoft.EventGrid.SubscriptionValidationEvent was delivered".into())
    );
}

#[test]
fn a_validation_event_without_a_code_is_an_error() {
    let body = event_grid(
        SUBSCRIPTION_VALIDATION,
        serde_json::json!({"validationUrl": "https://x"}),
    );
    assert_eq!(
        parse(body.as_bytes(), Some("SubscriptionValidation"), None),
        Err("event 0 `e1`: Microsoft.EventGrid.SubscriptionValidationEvent without data.validationCode".into())
    );
}

#[test]
fn a_validation_event_in_a_notification_is_ignored_not_answered() {
    assert_eq!(
        events(VALIDATION, Some("Notification"), None),
        [InboundEvent::Ignored {
            id: "6f2a41d0-2c1e-4b8e-9a51-0d3c7e5b9a10".into(),
            event_type: SUBSCRIPTION_VALIDATION.into(),
        }]
    );
}

#[test]
fn a_write_on_a_gallery_image_version_names_its_definition_and_version() {
    assert_eq!(
        events(
            GALLERY_WRITE,
            Some("Notification"),
            Some("application/json; charset=utf-8")
        ),
        [InboundEvent::GalleryVersionWritten {
            id: "b7d3e1f2-6a4c-4c0e-9f8b-2e5d1a7c3b90".into(),
            definition_id: DEFINITION_ID.into(),
            version: "1.4.0".into(),
        }]
    );
}

#[test]
fn gallery_version_ids_are_recognised_in_any_letter_case() {
    let lower = VERSION_ID.to_ascii_lowercase();
    let body = event_grid(
        RESOURCE_WRITE_SUCCESS,
        serde_json::json!({ "resourceUri": lower }),
    );
    let [InboundEvent::GalleryVersionWritten {
        definition_id,
        version,
        ..
    }] = &events(body.as_bytes(), None, None)[..]
    else {
        panic!("expected one gallery version write");
    };
    assert_eq!(definition_id, &DEFINITION_ID.to_ascii_lowercase());
    assert_eq!(version, "1.4.0");
}

#[test]
fn a_write_without_resource_uri_is_read_from_the_subject() {
    let body = serde_json::json!([{
        "id": "e1", "subject": VERSION_ID, "eventType": RESOURCE_WRITE_SUCCESS,
        "eventTime": "2026-05-04T06:00:00Z", "data": {}, "dataVersion": "2"
    }])
    .to_string();
    assert!(matches!(
        &events(body.as_bytes(), None, None)[..],
        [InboundEvent::GalleryVersionWritten { version, .. }] if version == "1.4.0"
    ));
}

#[test]
fn writes_on_other_resources_are_ignored() {
    for uri in [
        DEFINITION_ID.to_string(),
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1".into(),
        format!("{VERSION_ID}/extra"),
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images//versions/1.0.0".into(),
    ] {
        let body = event_grid(RESOURCE_WRITE_SUCCESS, serde_json::json!({ "resourceUri": uri }));
        assert_eq!(
            events(body.as_bytes(), None, None),
            [InboundEvent::Ignored { id: "e1".into(), event_type: RESOURCE_WRITE_SUCCESS.into() }],
            "{uri}"
        );
    }
}

#[test]
fn a_write_naming_no_resource_is_an_error() {
    let body = serde_json::json!([{"id": "e1", "eventType": RESOURCE_WRITE_SUCCESS, "data": {}}])
        .to_string();
    assert_eq!(
        error(&body),
        "event 0 `e1`: Microsoft.Resources.ResourceWriteSuccess without data.resourceUri or subject"
    );
}

#[test]
fn a_blob_created_event_is_ignored() {
    assert_eq!(
        events(BLOB_CREATED, Some("Notification"), None),
        [InboundEvent::Ignored {
            id: "3c1f5a7e-001e-0042-2b7d-9a4e5f000000".into(),
            event_type: "Microsoft.Storage.BlobCreated".into(),
        }]
    );
}

#[test]
fn kilns_event_in_the_event_grid_schema_carries_line_and_version() {
    assert_eq!(
        events(
            KILN_EVENT_GRID,
            Some("Notification"),
            Some("application/json")
        ),
        [InboundEvent::BaseImageUpdated {
            id: "kiln-7c0e2b4a-1f63-4d2e-9b8a-5e6f7a8b9c0d".into(),
            line: "Canonical:ubuntu-24_04-lts:server".into(),
            version: "24.04.202605010".into(),
        }]
    );
}

#[test]
fn a_single_cloudevent_with_publisher_offer_and_sku_makes_a_marketplace_line() {
    let want = [InboundEvent::BaseImageUpdated {
        id: "kiln-0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e".into(),
        line: "Canonical:ubuntu-24_04-lts:server".into(),
        version: "24.04.202605010".into(),
    }];
    let declared = Some("application/cloudevents+json; charset=utf-8");
    assert_eq!(
        events(KILN_CLOUDEVENT, Some("Notification"), declared),
        want
    );
    // Recognised by its shape too.
    assert_eq!(
        events(KILN_CLOUDEVENT, None, Some("application/json")),
        want
    );
}

#[test]
fn a_cloudevents_batch_yields_each_event_in_order() {
    let want = vec![
        InboundEvent::BaseImageUpdated {
            id: "kiln-1a2b3c4d-0001".into(),
            line: "MicrosoftWindowsServer:WindowsServer:2022-datacenter-azure-edition".into(),
            version: "20348.3561.250505".into(),
        },
        InboundEvent::BaseImageUpdated {
            id: "kiln-1a2b3c4d-0002".into(),
            line: DEFINITION_ID.into(),
            version: "1.4.0".into(),
        },
        InboundEvent::Ignored {
            id: "inv-5521".into(),
            event_type: "com.example.inventory.changed".into(),
        },
    ];
    assert_eq!(
        events(
            KILN_CLOUDEVENTS_BATCH,
            None,
            Some("application/cloudevents-batch+json")
        ),
        want
    );
    assert_eq!(events(KILN_CLOUDEVENTS_BATCH, None, None), want);
    assert_eq!(want[0].id(), "kiln-1a2b3c4d-0001");
}

#[test]
fn the_event_grid_triggers_single_event_object_is_accepted_even_as_a_json_string() {
    let single =
        serde_json::to_string(&serde_json::from_slice::<Value>(KILN_EVENT_GRID).unwrap()[0])
            .unwrap();
    let as_string = serde_json::to_string(&single).unwrap();
    for body in [single, as_string] {
        assert!(matches!(
            &events(body.as_bytes(), None, None)[..],
            [InboundEvent::BaseImageUpdated { version, .. }] if version == "24.04.202605010"
        ));
    }
}

#[test]
fn an_empty_batch_is_no_events() {
    assert_eq!(
        parse(b"[]", Some("Notification"), None),
        Ok(Inbound::Events(vec![]))
    );
    assert_eq!(
        parse(b" [ ] ", None, Some("application/cloudevents-batch+json")),
        Ok(Inbound::Events(vec![]))
    );
}

#[test]
fn a_body_that_is_not_json_is_an_error() {
    let e = error("<xml/>");
    assert!(e.starts_with("body is not JSON: "), "{e}");
    let e = error("\"not json inside\"");
    assert!(
        e.starts_with("body is a JSON string that does not hold JSON: "),
        "{e}"
    );
}

#[test]
fn a_body_that_is_neither_array_nor_object_is_an_error() {
    assert_eq!(
        error("42"),
        "expected a JSON array of events or one event object, got a number"
    );
    assert_eq!(error("[1]"), "event 0: expected an object, got a number");
}

#[test]
fn the_cloudevents_content_types_promise_a_shape() {
    assert_eq!(
        parse(
            KILN_CLOUDEVENTS_BATCH,
            None,
            Some("application/cloudevents+json")
        ),
        Err(
            "content type application/cloudevents+json: expected one event object, got an array"
                .into()
        )
    );
    assert_eq!(
        parse(KILN_CLOUDEVENT, None, Some("application/cloudevents-batch+json")),
        Err("content type application/cloudevents-batch+json: expected an array of events, got an object".into())
    );
    assert_eq!(
        parse(
            KILN_EVENT_GRID,
            None,
            Some("application/cloudevents-batch+json")
        ),
        Err("event 0: missing `specversion` (the content type says CloudEvents)".into())
    );
}

#[test]
fn an_event_without_a_type_is_an_error() {
    assert_eq!(
        error(r#"[{"id": "e1", "subject": "", "data": {}}]"#),
        "event 0 `e1`: missing `eventType`"
    );
    assert_eq!(
        error(r#"{"specversion": "1.0", "id": "c1", "source": "/x"}"#),
        "event 0 `c1`: missing `type`"
    );
    assert_eq!(
        error(r#"[{"id": "e1", "eventType": 7}]"#),
        "event 0 `e1`: `eventType`: expected a string, got a number"
    );
}

#[test]
fn an_event_without_an_id_is_an_error() {
    assert_eq!(error(r#"[{"eventType": "x"}]"#), "event 0: missing `id`");
    assert_eq!(
        error(r#"[{"id": " ", "eventType": "x"}]"#),
        "event 0: `id` is empty"
    );
}

#[test]
fn only_cloudevents_1_0_is_understood() {
    assert_eq!(
        error(r#"{"specversion": "0.3", "id": "c1", "type": "x", "source": "/x"}"#),
        "event 0 `c1`: specversion `0.3`: expected 1.0"
    );
}

#[test]
fn kilns_event_needs_a_concrete_version() {
    assert_eq!(
        error(&kiln_event(serde_json::json!({"line": "a:b:c"}))),
        "event 0 `e1`: data.version: missing"
    );
    assert_eq!(
        error(&kiln_event(
            serde_json::json!({"line": "a:b:c", "version": "latest"})
        )),
        "event 0 `e1`: data.version `latest`: expected the concrete new version"
    );
    assert_eq!(
        error(&kiln_event(
            serde_json::json!({"line": "a:b:c", "version": 1})
        )),
        "event 0 `e1`: data.version: expected a string, got a number"
    );
}

#[test]
fn kilns_event_needs_a_line_in_one_of_its_two_forms() {
    assert_eq!(
        error(&kiln_event(
            serde_json::json!({"publisher": "p", "offer": "o", "version": "1"})
        )),
        "event 0 `e1`: data.sku: missing (give line, or publisher, offer and sku)"
    );
    assert_eq!(
        error(&kiln_event(serde_json::json!({"version": "1"}))),
        "event 0 `e1`: data.publisher: missing (give line, or publisher, offer and sku)"
    );
    assert_eq!(
        error(&kiln_event(
            serde_json::json!({"line": "a:b:c", "sku": "c", "version": "1"})
        )),
        "event 0 `e1`: data: give either line or publisher, offer and sku, not both"
    );
    for line in [
        "a:b",
        "a::c",
        VERSION_ID,
        "/subscriptions/s/resourceGroups/rg",
    ] {
        assert_eq!(
            error(&kiln_event(serde_json::json!({"line": line, "version": "1"}))),
            format!("event 0 `e1`: data.line `{line}`: expected publisher:offer:sku or a gallery image definition id (…/galleries/G/images/D)")
        );
    }
}

#[test]
fn kilns_event_needs_json_data() {
    assert_eq!(
        error(&kiln_event(serde_json::json!("a:b:c 1"))),
        "event 0 `e1`: data: expected an object, got a string"
    );
    assert_eq!(
        error(r#"{"specversion": "1.0", "id": "c1", "type": "dev.kiln.base-image.updated", "source": "/x", "data_base64": "e30="}"#),
        "event 0 `c1`: data_base64 is not supported for dev.kiln.base-image.updated; send data as JSON"
    );
    assert_eq!(
        error(
            r#"{"specversion": "1.0", "id": "c1", "type": "dev.kiln.base-image.updated", "source": "/x"}"#
        ),
        "event 0 `c1`: missing `data`"
    );
}

#[test]
fn one_malformed_event_rejects_the_whole_delivery() {
    let body = serde_json::json!([
        {"id": "e1", "eventType": BASE_IMAGE_UPDATED, "data": {"line": "a:b:c", "version": "1"}},
        {"id": "e2", "eventType": BASE_IMAGE_UPDATED, "data": {}}
    ]);
    assert_eq!(
        error(&body.to_string()),
        "event 1 `e2`: data.version: missing"
    );
}

#[test]
fn the_examples_in_the_events_in_doc_parse_as_base_image_updates() {
    let doc = include_str!("../../../docs/events-in.md");
    let examples: Vec<&str> = doc
        .split("```json")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .collect();
    assert_eq!(examples.len(), 2);
    for example in examples {
        assert!(
            matches!(
                &events(example.as_bytes(), None, None)[..],
                [InboundEvent::BaseImageUpdated { line, version, .. }]
                    if line == "Canonical:ubuntu-24_04-lts:server" && version == "24.04.202605010"
            ),
            "{example}"
        );
    }
}
