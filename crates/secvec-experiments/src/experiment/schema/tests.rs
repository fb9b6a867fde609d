//! The experiment file's parsing, defaults and validation.

use super::*;
use secvec_core::train::AlignConfig;

#[test]
fn an_empty_file_is_the_reference_run() {
    let e = parse_str("()", "t.ron").unwrap();
    assert_eq!(e, Experiment::default());
    let a = e.align.unwrap();
    assert_eq!((a.rank, a.alpha, a.lr, a.epochs), (16, 32.0, 5e-4, 2));
    assert_eq!(e.security_vectors.samples, 100);
    assert_eq!(e.finetune.harmful, 1000);
    assert_eq!(e.finetune.learning_rate(), 2e-4);
    assert_eq!(e.finetune.arms, [Arm::Off, Arm::Active]);
    assert_eq!(e.backend, BackendKind::Flex);
}

#[test]
fn parses_every_stage() {
    let e = parse_str(
            r#"// a comment
            (
              name: "x", model: "m.gguf", backend: cuda, dtype: f32, seed: 3, max_len: 64,
              system_prompt: "be safe",
              align: None,
              security_vectors: (samples: 10, targets: ["q_proj", "v_proj"], data: File(path: "h.jsonl", format: "jsonl")),
              finetune: (total: 1000, ratio: 0.1, mode: Full, arms: [Active, Off]),
              evaluate: (metrics: [HarmfulRate], samples: 0, judge: "gcg", attacked_vectors_on: true,
                         checkpoints: [Shipped, VectorsOn]),
              expect: (min_gap: 0.2),
            )"#,
            "t.ron",
        )
        .unwrap();
    assert_eq!(e.name.as_deref(), Some("x"));
    assert_eq!(e.backend, BackendKind::Cuda);
    assert!(e.align.is_none());
    assert_eq!(e.security_vectors.targets, ["q_proj", "v_proj"]);
    assert_eq!(
        e.security_vectors.data,
        Source::File {
            path: "h.jsonl".into(),
            format: Some("jsonl".into())
        }
    );
    assert_eq!(e.finetune.counts().unwrap(), (100, 900));
    assert_eq!(e.finetune.learning_rate(), 2e-5);
    assert_eq!(e.expect.unwrap().min_gap, Some(0.2));
    assert!(e.evaluate.attacked_vectors_on);
    // The field's name before the rename still reads (old experiment files and results).
    let old = parse_str("(evaluate: (vectors_on: true))", "t.ron").unwrap();
    assert!(old.evaluate.attacked_vectors_on);
}

#[test]
fn defaults_are_secvec_cores() {
    let e = parse_str("()", "t.ron").unwrap();
    let a = e.align.unwrap();
    let core = AlignConfig::default();
    assert_eq!((a.rank, a.alpha, a.lr, a.epochs), (16, 32.0, 5e-4, 2));
    assert_eq!(
        (a.rank, a.alpha, a.lr, a.epochs, a.batch_size),
        (
            core.adapter.rank,
            core.adapter.alpha,
            core.train.lr,
            core.train.epochs,
            core.train.batch_size
        )
    );
    let s = &e.security_vectors;
    assert_eq!((s.rank, s.alpha, s.lr, s.epochs), (8, 16.0, 5e-4, 3));
    assert_eq!(e.finetune.learning_rate(), 2e-4);
    assert_eq!(e.finetune.epochs, 1);
}

fn err(text: &str) -> String {
    format!("{:#}", parse_str(text, "exp.ron").unwrap_err())
}

#[test]
fn unknown_fields_are_errors_with_line_and_column() {
    let e = err("(\n  seed: 1,\n  finetune: (\n    harmfull: 10,\n  ),\n)");
    assert!(e.starts_with("exp.ron:4:"), "{e}");
    assert!(e.contains("harmfull"), "{e}");
    let e = err("(learning_rate: 1e-4)");
    assert!(e.starts_with("exp.ron:1:"), "{e}");
    assert!(e.contains("learning_rate"), "{e}");
}

#[test]
fn wrong_types_and_syntax_are_errors_with_position() {
    let e = err("(\n  seed: \"zero\",\n)");
    assert!(e.starts_with("exp.ron:2:"), "{e}");
    let e = err("(backend: tpu)");
    assert!(e.contains("tpu"), "{e}");
    let e = err("(seed: 1");
    assert!(e.starts_with("exp.ron:1:"), "{e}");
}

#[test]
fn invalid_values_name_their_field() {
    for (text, field) in [
        ("(security_vectors: (lr: -1.0))", "security_vectors.lr"),
        (
            "(security_vectors: (targets: [\"qq_proj\"]))",
            "security_vectors.targets",
        ),
        ("(finetune: (epochs: 0))", "finetune.epochs"),
        (
            "(finetune: (total: 100))",
            "finetune.total and finetune.ratio",
        ),
        ("(finetune: (total: 100, ratio: 1.5))", "finetune.ratio"),
        ("(finetune: (arms: []))", "finetune.arms"),
        ("(evaluate: (judge: \"llm\"))", "evaluate.judge"),
        ("(backend: ndarray, dtype: bf16)", "dtype"),
        ("(align: (lr: 0.0))", "align.lr"),
        (
            "(sweep: [(field: \"a.seed\", values: [1]), (field: \"seed\", values: [2])])",
            "short name",
        ),
        ("(sweep: [(field: \"seed\", values: [])])", "no values"),
        (
            "(security_vectors: (kind: Steering(layers: [])))",
            "security_vectors.kind",
        ),
        (
            "(security_vectors: (benign: 10, kind: Steering(layers: [3])))",
            "security_vectors.benign",
        ),
        ("(finetune: (lisa: Some((rho: -1.0))))", "finetune.lisa.rho"),
        (
            "(finetune: (lisa: Some((align_steps: 0))))",
            "finetune.lisa.align_steps",
        ),
        ("(align: (vaccine: Some((rho: 0.0))))", "align.vaccine.rho"),
        (
            "(evaluate: (metrics: [HarmfulRate, WrongAnswersLearned]))",
            "WrongAnswersLearned needs `behaviour: Hallucination`",
        ),
        (
            "(behaviour: Hallucination)",
            "`behaviour: Hallucination` is measured by HallucinationRate",
        ),
        (
            "(behaviour: WrongCapitals)",
            "`behaviour: WrongCapitals` is measured by HallucinationRate",
        ),
        (
            "(behaviour: Hallucination, finetune: (skill_task: Capitals), evaluate: (metrics: [HallucinationRate]))",
            "finetune.skill_task: Capitals (the true capitals of the built-in countries) needs `behaviour: WrongCapitals`",
        ),
        (
            "(align: None, finetune: (lisa: Some(())))",
            "finetune.lisa: Lisa alternates with the defender's alignment data",
        ),
    ] {
        let e = err(text);
        assert!(e.contains(field), "{text}: {e}");
    }
}
