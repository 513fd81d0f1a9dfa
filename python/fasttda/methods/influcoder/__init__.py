"""Influcoder: a text encoder distilled from a decoder's gradient-influence rankings.

    from fasttda.methods import influcoder as ic
    teacher = ic.build_teacher(model_dir, anchors, pool, "teacher/")       # Y = cos(g_anchor, g_pool)
    student = ic.Student.load()                                            # all-MiniLM-L6-v2, offline
    ic.train(student, ic.texts_of(teacher.anchors, student.config.template),
             ic.texts_of(teacher.pool, student.config.template), teacher.y)
    store = ic.encode(student, pool, "pool.influcoder")                      # an int8 FeatureStore
    top = fasttda.score(ic.embed(student, queries), store, k=50, normalize=True)

See METHODS.md section 5 and the README section "Influcoder".
"""
from fasttda.methods.influcoder.encode import embed, encode, load_for_store, texts_of
from fasttda.methods.influcoder.evaluate import evaluate, spearman, spearman_agg, spearman_anchor
from fasttda.methods.influcoder.loss import influcoder_loss
from fasttda.methods.influcoder.student import Student, StudentConfig, default_encoder_dir, render
from fasttda.methods.influcoder.teacher import Teacher, TeacherConfig, build_teacher, gradient_features
from fasttda.methods.influcoder.train import TrainConfig, train
from fasttda.methods.influcoder.twostage import prefilter, recall, rerank, store_rows

__all__ = ["Student", "StudentConfig", "Teacher", "TeacherConfig", "TrainConfig", "build_teacher", "default_encoder_dir",
           "embed", "encode", "evaluate", "gradient_features", "influcoder_loss", "load_for_store", "prefilter",
           "recall", "render", "rerank", "spearman", "spearman_agg", "spearman_anchor", "store_rows", "texts_of",
           "train"]
