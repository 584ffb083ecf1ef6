// Kotlin client (LiteRT) for the Outpost package __NAME__, generated from its manifest.
// It cannot be compiled here (no Android toolchain): add it to an Android module depending on
// com.google.ai.edge.litert:litert, with the model exported as TFLite (`--format tflite`).
package ai.outpost.client

import android.graphics.Bitmap
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.RectF
import com.google.ai.edge.litert.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

data class OutpostDetection(val classId: Int, val className: String, val confidence: Float, val box: RectF)

class OutpostModel(modelFile: File) {
    companion object {
        // Generated from manifest.json: re-export the model instead of editing.
        val CLASS_NAMES = listOf(__CLASS_NAMES__)
        const val INPUT_WIDTH = __INPUT_W__
        const val INPUT_HEIGHT = __INPUT_H__
        const val CONF_THRESHOLD = __CONF__f
        const val IOU_THRESHOLD = __IOU__f
        const val MAX_DETECTIONS = __MAX_DET__
        const val PAD_VALUE = __PAD__
        const val TASK = "__TASK__"
    }

    private val interpreter = Interpreter(modelFile)

    fun detect(image: Bitmap): List<OutpostDetection> {
        val gain = minOf(INPUT_WIDTH.toFloat() / image.width, INPUT_HEIGHT.toFloat() / image.height)
        val w = Math.round(image.width * gain).coerceAtLeast(1)
        val h = Math.round(image.height * gain).coerceAtLeast(1)
        val padX = (INPUT_WIDTH - w) / 2f
        val padY = (INPUT_HEIGHT - h) / 2f
        val canvasBitmap = Bitmap.createBitmap(INPUT_WIDTH, INPUT_HEIGHT, Bitmap.Config.ARGB_8888)
        Canvas(canvasBitmap).apply {
            drawColor(Color.rgb(PAD_VALUE, PAD_VALUE, PAD_VALUE))
            drawBitmap(Bitmap.createScaledBitmap(image, w, h, true), padX, padY, null)
        }
        // TFLite exports take NHWC float32 RGB in 0..1.
        val input = ByteBuffer.allocateDirect(4 * INPUT_WIDTH * INPUT_HEIGHT * 3).order(ByteOrder.nativeOrder())
        val pixels = IntArray(INPUT_WIDTH * INPUT_HEIGHT)
        canvasBitmap.getPixels(pixels, 0, INPUT_WIDTH, 0, 0, INPUT_WIDTH, INPUT_HEIGHT)
        for (p in pixels) {
            input.putFloat(((p shr 16) and 0xFF) / 255f)
            input.putFloat(((p shr 8) and 0xFF) / 255f)
            input.putFloat((p and 0xFF) / 255f)
        }
        val shape = interpreter.getOutputTensor(0).shape()  // (1, 4 + classes, anchors)
        val output = Array(1) { Array(shape[1]) { FloatArray(shape[2]) } }
        interpreter.run(input, output)
        val rows = output[0]
        val found = mutableListOf<OutpostDetection>()
        for (a in 0 until shape[2]) {
            var best = 0
            for (c in 1 until CLASS_NAMES.size) if (rows[4 + c][a] > rows[4 + best][a]) best = c
            val score = rows[4 + best][a]
            if (score <= CONF_THRESHOLD) continue
            // Boxes are normalised to the input in TFLite exports.
            val cx = rows[0][a] * INPUT_WIDTH; val cy = rows[1][a] * INPUT_HEIGHT
            val bw = rows[2][a] * INPUT_WIDTH; val bh = rows[3][a] * INPUT_HEIGHT
            val box = RectF((cx - bw / 2 - padX) / gain, (cy - bh / 2 - padY) / gain,
                            (cx + bw / 2 - padX) / gain, (cy + bh / 2 - padY) / gain)
            found.add(OutpostDetection(best, CLASS_NAMES[best], score, box))
        }
        return nms(found.sortedByDescending { it.confidence })
    }

    private fun nms(sorted: List<OutpostDetection>): List<OutpostDetection> {
        val kept = mutableListOf<OutpostDetection>()
        for (d in sorted) {
            if (kept.size >= MAX_DETECTIONS) break
            val overlaps = kept.any { k ->
                if (k.classId != d.classId) return@any false
                val iw = maxOf(0f, minOf(k.box.right, d.box.right) - maxOf(k.box.left, d.box.left))
                val ih = maxOf(0f, minOf(k.box.bottom, d.box.bottom) - maxOf(k.box.top, d.box.top))
                val inter = iw * ih
                val union = k.box.width() * k.box.height() + d.box.width() * d.box.height() - inter
                union > 0 && inter / union > IOU_THRESHOLD
            }
            if (!overlaps) kept.add(d)
        }
        return kept
    }
}
