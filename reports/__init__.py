"""Reports stage: reads what the other stages wrote (evaluate's metrics, bundles' manifests, device parity and
bench results) and explains single images with a float model or a bundle. It may import every stage; no
stage imports it.

    edgecxr report eval-test/ bundles/tflite-int8 parity.json --out report/evidence.html
    edgecxr explain chest.jpeg --model run/model.keras --out cam.png
"""
